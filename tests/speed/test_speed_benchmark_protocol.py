"""scripts/benchmark_speed.py --protocol cpu_peer: rows composed from the benchmark's protocols and variants, the
derived columns (FLOPs, % of matmul peak, ratio to the peer), the second run beside, the peer's timing shim, and
tiny end-to-end runs (32 px, demo data, 1 warm-up + 2 timed iterations)."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from vqseg_bundle.benchmarks.protocols import PROTOCOLS
from vqseg_bundle.benchmarks.variants import variant_overrides

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("benchmark_speed_protocol", ROOT / "scripts" / "benchmark_speed.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

#: 32 px and a small U-Net: the protocol's recipe, cheap enough for CI
TINY = '{"image_size": 32, "network_def#features": [4, 8, 16, 32, 32]}'
TINY_ARGS = ["--protocol", "cpu_peer", "--dataset_dir", "demo", "--warmup", "1", "--iterations", "2", "--set", TINY]


def _args(*extra: str):
    return bench._parse_args([*TINY_ARGS, *extra])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--protocol", "gpu"], "protocol"),
        (["--protocol", "cpu_peer", "--paths", "fp8"], "paths"),
        (["--protocol", "cpu_peer", "--runs", "alone,twice"], "runs"),
        (["--protocol", "cpu_peer", "--thread_counts", "0"], "thread_counts"),
        (["--protocol", "cpu_peer", "--thread_counts", "one"], "thread_counts"),
        (["--protocol", "cpu_peer", "--acdc_variants", "nope"], "acdc_variants"),
        (["--protocol", "cpu_peer", "--dataset_dir", "/no/such/folder"], "dataset_dir"),
        (["--protocol", "cpu_peer", "--peak_repeats", "0"], "peak"),
    ],
)
def test_protocol_arguments_are_checked(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench._parse_args(argv)
    assert message in capsys.readouterr().err


def test_help_lists_the_protocol_mode(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench._parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--protocol" in capsys.readouterr().out


def test_dataset_defaults_to_acdc_only_in_protocol_mode():
    assert bench._parse_args([]).dataset_dir == "demo"
    expected = str(bench.ACDC_DIR) if bench.ACDC_DIR.is_dir() else "demo"
    assert bench._parse_args(["--protocol", "cpu_peer"]).dataset_dir == expected


@pytest.mark.parametrize("path, protocol", [("fp32", "cpu_peer"), ("fast", "cpu_peer_fast")])
def test_row_overrides_are_the_benchmark_protocol_and_variant(path, protocol, tmp_path):
    args = _args()
    ov = bench.protocol_overrides(args, "vqp_unimatch_qpm_all", path, 2, str(tmp_path))
    proto = PROTOCOLS[protocol]
    for k, v in proto.schedule_overrides().items():
        if k != "num_threads":
            assert ov[k] == v, k
    for k, v in variant_overrides("vqp_unimatch_qpm_all", proto).items():
        assert ov[k] == v, k
    assert ov["num_threads"] == 2 and ov["labeled"] == "labeled_3_cases" and ov["dataset_dir"] == "demo"
    assert ov.get("amp", False) is (path == "fast") and ov.get("channels_last", False) is (path == "fast")


def test_rows_cover_every_combination_and_count_flops_once_per_configuration():
    rows = bench.protocol_rows(bench._parse_args(["--protocol", "cpu_peer"]))
    ours = [r for r in rows if r["variant"] != bench.PEER_NAME]
    peer = [r for r in rows if r["variant"] == bench.PEER_NAME]
    assert len(ours) == 2 * 2 * 2 * 2 and len(peer) == 2 * 2
    assert {(r["variant"], r["path"]) for r in ours if r["flops"]} == {
        (v, p) for v in bench.PROTOCOL_VARIANTS for p in ("fp32", "fast")
    }
    assert sum(r["flops"] for r in ours) == 4 and sum(r["flops"] for r in peer) == 1
    assert {(r["threads"], r["run"]) for r in peer} == {(t, r) for t in (1, 2) for r in bench.RUNS}
    assert not [r for r in bench.protocol_rows(_args("--peer", "none")) if r["variant"] == bench.PEER_NAME]


def test_derived_columns_and_table():
    peaks = [
        {"dtype": "float32", "threads": 1, "size": 64, "gflops": 100.0, "gflops_median": 90.0},
        {"dtype": "bfloat16", "threads": 1, "size": 64, "gflops": 200.0, "gflops_median": 180.0},
    ]
    base = {"threads": 1, "run": "alone", "ms_min": 1.0}
    results = [
        {**base, "variant": "unimatch", "path": "fp32", "ms_per_it": 100.0, "flops": int(2e9)},
        {**base, "variant": "unimatch", "path": "fp32", "run": "beside", "ms_per_it": 200.0, "flops": None},
        {**base, "variant": "unimatch", "path": "fast", "ms_per_it": 50.0, "flops": int(2e9)},
        {**base, "variant": "vqp_unimatch_qpm_all", "path": "fast", "error": "boom"},
        {**base, "variant": bench.PEER_NAME, "path": "fp32", "ms_per_it": 125.0, "flops": int(2e9)},
        {**base, "variant": bench.PEER_NAME, "path": "fp32", "run": "beside", "skipped": "no ACDC"},
    ]
    bench._fill_derived(results, peaks)
    fp32, beside, fast = results[:3]
    assert fp32["gflops_per_s"] == pytest.approx(20.0) and fp32["pct_of_peak"] == pytest.approx(20.0)
    assert beside["flops"] == int(2e9) and beside["gflops_per_s"] == pytest.approx(10.0)  # FLOPs of its configuration
    assert fast["peak_dtype"] == "bfloat16" and fast["pct_of_peak"] == pytest.approx(20.0)
    assert fp32["x_peer"] == pytest.approx(0.8) and fast["x_peer"] == pytest.approx(0.4) and "x_peer" not in beside
    report = {"results": results, "peaks": peaks}
    lines = bench.format_protocol_table(report).splitlines()
    assert len(lines) == 2 + len(results) + 1 + 2 + len(peaks)
    assert "| 20.0 | 100.0 (float32) | 20.0 | 0.80 |" in lines[2]
    assert "error: boom" in lines[5] and "skipped: no ACDC" in lines[7]
    widths = {ln.count("|") for ln in lines[: 2 + len(results)]}
    assert widths == {12}  # every row has the header's cells


def test_matmul_peak_and_machine():
    threads = torch.get_num_threads()
    for dtype in ("float32", "bfloat16"):
        p = bench.matmul_peak(dtype, 1, size=64, repeats=2)
        assert p["gflops"] >= p["gflops_median"] > 0 and p["dtype"] == dtype
    assert torch.get_num_threads() == threads
    m = bench.cpu_machine()
    assert set(m["flags"]) == set(bench.CPU_FLAGS) and m["cores"] >= 1 and m["cpu_model"]
    assert m["native_bf16"] == (m["flags"]["avx512_bf16"] or m["flags"]["amx_bf16"])
    assert "native bf16" in bench.machine_line(m)


def test_peer_timing_is_parsed():
    stamps = [0.0, 1.0, 1.1, 1.3, 1.4, 9.0]
    out = "iter,RV\nnoise\nPEER_TIMING " + json.dumps({"stamps": stamps, "flops": 7})
    t = bench.parse_peer_timing(out, warmup=1, iterations=3)  # intervals 1.0 | 0.1, 0.2, 0.1 | 7.6 (FLOPs)
    assert t["ms_per_it"] == pytest.approx(100.0) and t["ms_min"] == pytest.approx(100.0) and t["n_timed"] == 3
    assert t["flops"] == 7
    with pytest.raises(RuntimeError, match="optimizer steps"):
        bench.parse_peer_timing(out, warmup=3, iterations=3)
    with pytest.raises(RuntimeError, match="PEER_TIMING"):
        bench.parse_peer_timing("iter,RV\n", 1, 1)


#: a stand-in for the peer's script (same command line): conv + SGD steps, a line after the loop that the shim's
#: early exit must prevent
FAKE_PEER = textwrap.dedent("""
    import argparse, torch
    p = argparse.ArgumentParser()
    for a in ("mode", "acdc", "out"):
        p.add_argument(a)
    for a in ("--size", "--batch", "--iters", "--val_every", "--threads", "--labeled", "--seed"):
        p.add_argument(a, type=int)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    net = torch.nn.Conv2d(1, 4, 3, padding=1)
    opt = torch.optim.SGD(net.parameters(), 0.01)
    for _ in range(a.iters):
        opt.zero_grad()
        net(torch.randn(a.batch, 1, a.size, a.size)).square().mean().backward()
        opt.step()
    print("VALIDATION RAN")
    """)


def _fake_peer(tmp_path: Path):
    script = tmp_path / "fake_peer.py"
    script.write_text(FAKE_PEER)
    (tmp_path / "acdc" / "data" / "slices").mkdir(parents=True)
    return _args("--peer", str(script), "--dataset_dir", str(tmp_path / "acdc"))


def test_shim_times_the_peer_step_and_counts_its_flops(tmp_path):
    args = _fake_peer(tmp_path)
    assert bench.peer_skip_reason(args) is None
    cmd = bench.peer_command(args, 1, 10, str(tmp_path / "out"))
    assert cmd[cmd.index("--size") + 1] == "32" and cmd[cmd.index("--batch") + 1] == "4"
    assert cmd[cmd.index("--iters") + 1] == "10" and cmd[cmd.index("--val_every") + 1] == "10"
    r = bench.run_peer_row(args, {"threads": 1, "flops": True})
    assert "error" not in r, r
    assert r["n_timed"] == 2 and r["ms_per_it"] > 0
    # one iteration: the conv forward (2 x batch 4 x 1 x 9 x 32 x 32 x 4 FLOPs) and its weight gradient (as many)
    assert r["flops"] == 2 * 4 * 1 * 9 * 32 * 32 * 4 * 2
    assert bench.peer_skip_reason(_args("--peer", str(tmp_path / "missing.py"))).startswith("no peer script")
    assert "ACDC" in bench.peer_skip_reason(_args("--peer", str(tmp_path / "fake_peer.py")))


def _stub(body: str) -> list[str]:
    return [sys.executable, "-c", "import os, sys, time\nready = os.environ['VQSEG_READY_FILE']\n" + body]


def test_second_run_is_warm_before_and_ended_after_the_measurement():
    with bench._Beside(_stub("time.sleep(0.3); open(ready, 'w').close(); time.sleep(60)")) as beside:
        assert beside.proc.poll() is None
        assert beside.proc.args[-1].startswith("import os")
    assert beside.survived and beside.proc.poll() is not None  # it ran throughout and was ended

    with bench._Beside(_stub("open(ready, 'w').close()")) as beside:
        beside.proc.wait(timeout=30)
    assert not beside.survived

    with pytest.raises(RuntimeError, match="before it was warm"):
        with bench._Beside(_stub("print('no data'); sys.exit(3)")):
            pass
    with pytest.raises(RuntimeError, match="not warm after"):
        with bench._Beside(_stub("time.sleep(60)"), ready_timeout=0.5):
            pass


def test_protocol_mode_end_to_end(tmp_path):
    """Both variants, fp32 and the fast path, one thread, alone, with FLOPs and the matmul peaks; no peer."""
    out = tmp_path / "speed.json"
    argv = [*TINY_ARGS, "--inprocess", "--thread_counts", "1", "--runs", "alone", "--peer", "none"]
    results = bench.main([*argv, "--peak_size", "64", "--peak_repeats", "2", "--json", str(out)])
    assert [(r["variant"], r["path"]) for r in results] == [
        (v, p) for v in bench.PROTOCOL_VARIANTS for p in ("fp32", "fast")
    ]
    for r in results:
        assert "error" not in r, r
        assert r["n_timed"] == 2 and r["ms_per_it"] > 0 and r["batch"] == "4+4" and r["image_size"] == 32
        assert r["flops"] > 0 and r["gflops_per_s"] > 0 and r["pct_of_peak"] > 0
        assert r["amp"] is (r["path"] == "fast") and r["channels_last"] is (r["path"] == "fast")
        assert r["protocol"] == {"fp32": "cpu_peer", "fast": "cpu_peer_fast"}[r["path"]]
    # the quantized variant does more work per iteration than UniMatch
    assert results[2]["flops"] > results[0]["flops"]
    report = json.loads(out.read_text())
    assert {"machine", "environment", "peaks", "results", "args"} <= set(report)
    assert {(p["dtype"], p["threads"]) for p in report["peaks"]} == {("float32", 1), ("bfloat16", 1)}
    assert report["environment"]["torch"] == torch.__version__


def test_beside_row_runs_the_real_second_run(tmp_path):
    """One row beside a real second run (``--_companion``: the same configuration, one thread)."""
    argv = [*TINY_ARGS, "--inprocess", "--acdc_variants", "unimatch", "--paths", "fp32", "--thread_counts", "1"]
    argv += ["--runs", "beside", "--peer", "none", "--peak_size", "0"]
    (r,) = bench.main(argv)
    assert "error" not in r, r
    assert r["run"] == "beside" and r["n_timed"] == 2 and r["ms_per_it"] > 0 and r["flops"] > 0


@pytest.mark.skipif(
    not (bench.PEER_SCRIPT.is_file() and (bench.ACDC_DIR / "data" / "slices").is_dir()),
    reason="needs ../shared/peers/run_unimatch_cpu.py and the ACDC data at ../shared/data/acdc",
)
def test_real_peer_step_at_32_px():
    args = bench._parse_args([*TINY_ARGS[:2], "--dataset_dir", str(bench.ACDC_DIR), *TINY_ARGS[4:]])
    r = bench.run_peer_row(args, {"threads": 1, "flops": True})
    assert "error" not in r, r
    assert r["n_timed"] == 2 and r["ms_per_it"] > 0 and r["flops"] > 0
