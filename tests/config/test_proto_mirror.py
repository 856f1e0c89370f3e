"""Each phase's typed spec message mirrors its config section field for field, so a spec built from any
profile crosses the wire and comes back equal."""

import pytest
from google.protobuf.descriptor import FieldDescriptor
from pydantic import BaseModel

from shared.config import available_profiles, load_profile
from shared.rpc.convert import dict_to_message, message_to_dict
from shared.runtime.phase import discover_phases

PHASES = discover_phases()


def _model_of(annotation):
    """The pydantic model inside an annotation (list[Model] -> Model), or None for scalars."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _compare(model: type[BaseModel], descriptor, path: str):
    py_fields = set(model.model_fields)
    proto_fields = {f.name for f in descriptor.fields}
    assert py_fields == proto_fields, (f"{path}: config-only {sorted(py_fields - proto_fields)}, "
                                       f"proto-only {sorted(proto_fields - py_fields)}")
    for name, info in model.model_fields.items():
        sub = _model_of(info.annotation)
        field = descriptor.fields_by_name[name]
        if sub is not None:
            assert field.type == FieldDescriptor.TYPE_MESSAGE, f"{path}.{name} should be a message"
            _compare(sub, field.message_type, f"{path}.{name}")


def test_every_config_phase_has_a_service():
    from shared.config.schema import PHASES as CONFIG_PHASES
    assert set(PHASES) == set(CONFIG_PHASES)


@pytest.mark.parametrize("phase", list(PHASES))
def test_spec_fields_mirror_config_section(phase):
    d = PHASES[phase]
    _compare(d.config_model, d.spec_message.DESCRIPTOR, phase)


@pytest.mark.parametrize("profile", available_profiles())
@pytest.mark.parametrize("phase", list(PHASES))
def test_section_round_trips_through_its_spec_message(profile, phase):
    d = PHASES[phase]
    section = getattr(load_profile(profile).phases, phase)
    message = dict_to_message(section.model_dump(mode="json"), d.spec_message)
    back = d.config_model.model_validate(message_to_dict(message))
    assert back == section
