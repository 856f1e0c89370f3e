"""`agentforge report RUN_ID` on a real run: every phase executed by the real coordinator (embedded, the ci
profile shrunk: tests/report/pipeline.py), then the report read back from the state file and the store.

Every plot is drawn from a non-empty series whose every point is a value of a run event of kind "metrics"
of its phase; the page references only files beside it (no network asset); the dataset table is the
manifest's; the benchmark table holds the phases' final metrics; a plot without data is not drawn and the
page says why."""

import dataclasses
import re
from html.parser import HTMLParser

import pytest

from shared.cli import EXIT_FAILED, main
from shared.report import build_report, load_run, write_report
from shared.report.build import MANIFEST_FILE
from shared.report.plots import PLOTS
from shared.storage import ArtifactRef, LocalStore

pytestmark = pytest.mark.slow     # a whole (small) pipeline run: about a minute on 2 cores
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def written(pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    rc = main(["report", pipeline.run_id, "--state", str(pipeline.state_path), "--store", str(pipeline.store_path),
               "--out", str(out)])
    assert rc == 0
    data = load_run(pipeline.state_path, pipeline.run_id)
    return out, build_report(data, LocalStore(pipeline.store_path)), data


class Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.refs, self.imgs = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "data"):
                self.refs.append(value)
            if tag == "img" and name == "src":
                self.imgs.append(value)


def test_every_plot_is_drawn_from_a_non_empty_series_of_the_run_s_events(written, pipeline):
    print(f"pipeline: {pipeline.seconds:.1f} s, per phase {pipeline.phase_seconds}")
    _, report, data = written
    assert report.missing == ()
    assert [f.plot.id for f in report.figures] == [p.id for p in PLOTS]      # every plot has data
    events = {e.seq: e for e in data.events}
    for figure in report.figures:
        assert figure.series and all(s.points for s in figure.series), figure.plot.id
        for s in figure.series:
            for p in s.points:
                event = events[p.seq]
                assert event.kind == "metrics" and event.phase == figure.plot.phase, (figure.plot.id, p)
                values = event.payload["metrics"]
                if s.metric:
                    assert values[s.metric] == p.y, (figure.plot.id, s.metric, p)
                else:
                    assert p.y in values.values(), (figure.plot.id, s.label, p)
    by_id = {f.plot.id: f for f in report.figures}
    # the shapes each plot promises, as the phases reported them
    assert {s.label for s in by_id["cognate_loss"].series} == {"warmup", "reasoning", "memory", "speed"}
    warmup_end = max(p.x for p in next(s for s in by_id["cognate_loss"].series if s.label == "warmup").points)
    assert all(min(p.x for p in s.points) > warmup_end for s in by_id["cognate_loss"].series if s.label != "warmup")
    halting = {s.label: s for s in by_id["cognate_halting"].series}
    n_sup = data.run.config["phases"]["cognate"]["model"]["n_sup"]
    assert set(halting) == {"warmup", "reasoning", "memory", "speed"}
    assert all([p.x for p in s.points] == list(range(1, n_sup + 1)) for s in halting.values())
    assert len({sum(p.y for p in s.points) for s in halting.values()}) == 1        # same positions for every model
    barrier = {s.label: s for s in by_id["cognate_barrier"].series}
    assert set(barrier) == {"reasoning-memory", "reasoning-speed", "memory-speed"}
    assert all(s.points[0].x == 0.0 and s.points[-1].x == 1.0 for s in barrier.values())
    generations = data.run.config["phases"]["evomerge"]["generations"]
    for s in by_id["evomerge_fitness"].series + by_id["evomerge_diversity"].series:
        assert [p.x for p in s.points] == list(range(generations + 1)), s.label
    assert by_id["evomerge_diversity"].series[0].points[0].y == pytest.approx(1.0)   # generation 0 is the reference
    assert len(by_id["baking_accuracy"].series) >= 2                              # one per strategy in the data
    assert {"divergence", "ablation"} <= {s.label for s in by_id["anti_theater"].series}
    assert len(by_id["bitnet_blocks"].series[0].points) == data.run.config["phases"]["cognate"]["model"]["num_layers"]
    assert len(by_id["bitnet_layers"].series) > 2 * len(by_id["bitnet_blocks"].series[0].points)


def test_the_page_references_only_files_beside_it_and_no_network_asset(written):
    out, report, _ = written
    text = (out / "index.html").read_text(encoding="utf-8")
    parser = Refs()
    parser.feed(text)
    assert not re.search(r"https?:|ftp:|wss?:", text, flags=re.I)      # (a file:// or s3:// artifact URI is text)
    assert not {"script", "link", "iframe", "object", "embed"} & set(parser.tags)
    assert "@import" not in text and "url(" not in text
    assert parser.refs and all(re.fullmatch(r"[a-z0-9_]+\.png", r) for r in parser.refs)
    assert all((out / r).is_file() for r in parser.refs)
    pngs = {p.name for p in out.glob("*.png")}
    assert parser.imgs == [f.file for f in report.figures] and set(parser.imgs) == pngs
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    for figure in report.figures:     # each plot is listed with the events it was drawn from
        assert f"#{figure.seqs[0]}" in text.split(f'id="{figure.plot.id}"', 1)[1].split("</figure>", 1)[0]
    assert "None: every plot and table has data." in text


def test_the_dataset_table_is_the_manifest_of_the_run_s_datasets_artifact(written, pipeline):
    out, report, data = written
    store = LocalStore(pipeline.store_path)
    (ref,) = [ArtifactRef.from_dict(a) for a in data.phases["datasets"].artifacts if a["name"] == "datasets"]
    manifest = store.load_json(ref, MANIFEST_FILE)
    table = next(t for t in report.tables if t.id == "datasets")
    rows = {r[0]: r for r in table.rows}
    assert set(rows) == set(manifest["datasets"]) | set(manifest["absent_optional"])
    for name, info in manifest["datasets"].items():
        assert rows[name][1] == info["source"] and rows[name][2] == ("yes" if info["synthetic"] else "no")
        assert rows[name][5:8] == tuple(str(info["files"][s]["count"]) for s in ("train", "val", "test"))
    text = (out / "index.html").read_text(encoding="utf-8")
    assert all(f"<td>{name}</td><td>{info['source']}</td>" in text for name, info in manifest["datasets"].items())


def test_the_benchmark_table_holds_the_phases_final_metrics(written):
    _, report, data = written
    table = next(t for t in report.tables if t.id == "benchmarks")
    rows = {(r[0], r[1]): r for r in table.rows}
    final = data.phases["bitnet"].metrics
    for name in ("bitnet/gsm8k_acc", "bitnet/arc_acc", "bitnet/compression_ratio", "bitnet/ternary_fraction"):
        assert float(rows[("bitnet", name)][2]) == pytest.approx(final[name], rel=1e-3), name
    assert ("quietstar", "quietstar/gsm8k_acc_phase2") in rows and ("cognate", "cognate/reasoning/gsm8k_acc") in rows


def test_a_plot_without_data_is_not_drawn_and_the_page_says_why(written, tmp_path):
    _, _, data = written
    pending = dataclasses.replace(data.phases["bitnet"], state="pending")
    trimmed = dataclasses.replace(
        data, phases={**data.phases, "bitnet": pending},
        events=tuple(e for e in data.events if not (e.kind == "metrics" and e.phase in ("quietstar", "bitnet"))))
    report = build_report(trimmed, store=None)
    drawn = {f.plot.id for f in report.figures}
    assert drawn == {p.id for p in PLOTS if p.phase not in ("quietstar", "bitnet")}
    reasons = dict(report.missing)
    assert any(w.startswith("Phase 4: quantization cost per block") and r == "phase bitnet has not started (pending)"
               for w, r in reasons.items())
    assert any(w.startswith("Phase 3b: Quiet-STaR RL reward")
               and re.fullmatch(r"phase quietstar finished \((succeeded|approved)\) without reporting .*", r)
               for w, r in reasons.items())
    assert any(w.startswith("Dataset sources") and "no artifact store" in r for w, r in reasons.items())
    index = write_report(report, tmp_path)
    text = index.read_text(encoding="utf-8")
    assert {p.name for p in tmp_path.glob("*.png")} == {f"{i}.png" for i in drawn}
    assert "Missing data" in text and "phase bitnet has not started (pending)" in text
    assert "rl_reward.png" not in text


def test_bad_arguments_fail_with_one_line_naming_the_cause(tmp_path, capsys, written, pipeline):
    assert main(["report", "run-x", "--state", str(tmp_path / "nope.sqlite"), "--out", str(tmp_path / "o")]) \
        == EXIT_FAILED
    assert f"no coordinator state file at {tmp_path / 'nope.sqlite'}" in capsys.readouterr().err
    assert not (tmp_path / "nope.sqlite").exists()           # never created by looking
    assert main(["report", "run-missing", "--state", str(pipeline.state_path), "--out", str(tmp_path / "o")]) \
        == EXIT_FAILED
    assert "unknown run id 'run-missing'" in capsys.readouterr().err
