"""How the report turns metrics events into series: a step reported again (a job resumed from its checkpoint
redoes the steps after it) keeps the latest value; only events at the plot's stage count (a phase's final
"publishing" event repeats some names at step 0); x can be another metric of the same event."""

from services.coordinator.core.state import EventRecord
from shared.report.data import RunData, latest_family, latest_values, series_by


def ev(seq, phase, stage, step, **metrics):
    return EventRecord("r", seq, "metrics", phase, {"stage": stage, "step": step,
                                                    "metrics": {k.replace("__", "/"): v for k, v in metrics.items()}},
                       float(seq))


def run(*events):
    return RunData(run=None, phases={}, events=tuple(events))


def test_a_repeated_step_keeps_its_latest_value_and_other_stages_do_not_count():
    data = run(ev(1, "evomerge", "generation 0", 0, evomerge__best_fitness=1.0),
               ev(2, "evomerge", "generation 1", 1, evomerge__best_fitness=1.2),
               ev(3, "evomerge", "generation 1", 1, evomerge__best_fitness=1.3),     # the resumed job's
               ev(4, "evomerge", "publishing", 0, evomerge__best_fitness=9.0),
               ev(5, "cognate", "generation 2", 2, evomerge__best_fitness=7.0))      # another phase
    (s,) = series_by(data, "evomerge", r"evomerge/(?P<label>best_fitness)", stage=r"generation \d+")
    assert s.label == "best_fitness" and s.metric == "evomerge/best_fitness"
    assert [(p.x, p.y, p.seq) for p in s.points] == [(0.0, 1.0, 1), (1.0, 1.3, 3)]
    assert latest_values(data, "evomerge", r"evomerge/best_fitness")["evomerge/best_fitness"].seq == 4


def test_x_from_another_metric_and_families_from_the_latest_event():
    data = run(ev(1, "cognate", "loss barriers", 0, cognate__barrier_path__t=0.0, cognate__barrier_path__a_b=2.0),
               ev(2, "cognate", "loss barriers", 1, cognate__barrier_path__t=0.5, cognate__barrier_path__a_b=2.5),
               ev(3, "cognate", "training speed", 8, cognate__speed__halting_hist__1=3.0,
                  cognate__speed__halting_hist__2=5.0),
               ev(4, "cognate", "training speed", 16, cognate__speed__halting_hist__1=6.0,
                  cognate__speed__halting_hist__2=2.0))
    (path,) = series_by(data, "cognate", r"cognate/barrier_path/(?P<label>.+)", stage="loss barriers",
                        x="cognate/barrier_path/t")
    assert path.label == "a_b" and [(p.x, p.y) for p in path.points] == [(0.0, 2.0), (0.5, 2.5)]
    (hist,) = latest_family(data, "cognate", r"cognate/(?P<label>[^/]+)/halting_hist/(?P<x>\d+)", stage="training ")
    assert hist.label == "speed" and [(p.x, p.y, p.seq) for p in hist.points] == [(1.0, 6.0, 4), (2.0, 2.0, 4)]
