"""One canonical JSON and one config hash for runs, manifests and jobs."""

import pytest

from shared import canonical
from shared.config import config_hash, load_profile
from shared.errors import InvalidSpecError
from shared.storage.manifest import config_hash as manifest_config_hash


def test_key_order_and_whitespace_do_not_change_the_hash():
    assert canonical.config_hash({"b": 1, "a": [1, 2]}) == canonical.config_hash({"a": [1, 2], "b": 1})
    assert canonical.dumps_canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'


def test_run_and_manifest_hash_the_same_config_identically():
    data = load_profile("ci").model_dump(mode="json")
    data["description"] = "non-ASCII: naïve café"
    assert config_hash(data) == manifest_config_hash(data) == canonical.config_hash(data)
    assert config_hash(load_profile("ci")) == canonical.config_hash(load_profile("ci").model_dump(mode="json"))


def test_nan_is_refused_both_ways():
    with pytest.raises(InvalidSpecError, match="NaN"):
        canonical.dumps_canonical({"x": float("nan")})
    with pytest.raises(InvalidSpecError, match="NaN"):
        canonical.loads_strict('{"x": NaN}')
