"""``rawgpu kernels``: every kernel compiled for real (NVVM, ptxas) for sm_80 and sm_90, no GPU.

The compile tests need the cuda12 extra (NVVM and the nvidia-cuda-nvcc wheel's ptxas) and skip
with the one-line reason the report gives when it is missing; CI installs it. They compile in
subprocesses without the simulator: this pytest process may have switched it on (conftest.py),
and the simulator has no compiler. Each architecture compiles once per session (a module fixture),
both at the same time. The occupancy arithmetic, the parsers and the launch settings are tested
everywhere, with no compiler.
"""

import argparse
import json
import os
import re
import subprocess
import sys

import pytest

from rawgpu import kernel_report as kr

ARCHS = ("sm_80", "sm_90")


# --- the occupancy arithmetic (no compiler needed) --------------------------------------------


@pytest.mark.parametrize(
    "arch, registers, shared, threads, blocks, warps, limiter",
    [
        # The regblock matmul before issue 8: 156 registers leave room for one 8-warp block.
        ("sm_90", 156, 4160, 256, 1, 8, "registers"),
        ("sm_90", 128, 4160, 256, 2, 16, "registers"),  # the goal for 8x8 per thread
        ("sm_90", 64, 4096, 256, 4, 32, "registers"),  # ... and for 4x4
        ("sm_90", 32, 0, 256, 8, 64, "threads, registers"),  # full: both run out together
        ("sm_80", 24, 0, 256, 8, 64, "threads"),
        ("sm_90", 16, 0, 32, 32, 32, "blocks"),  # one-warp blocks: 32 blocks, half the slots
        # 48 KiB static shared + 1 KiB reserved per block: two blocks in sm_86's 100 KiB.
        ("sm_86", 32, 48 * 1024, 128, 2, 8, "shared memory"),
        ("sm_90", 255, 0, 1024, 0, 0, "registers"),  # 255 x 1024 registers: cannot launch at all
    ],
)
def test_occupancy(arch, registers, shared, threads, blocks, warps, limiter):
    spec = kr.ARCHS[arch]
    occ = kr.occupancy(spec, registers, shared, threads)
    assert (occ["blocks_per_sm"], occ["warps_per_sm"], occ["limiter"]) == (blocks, warps, limiter)
    assert occ["occupancy"] == warps / spec.max_warps


def test_parse_ptxas():
    text = (
        "ptxas info    : 8 bytes gmem\n"
        "ptxas info    : Compiling entry function '_Z6kernel' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z6kernel\n"
        "    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 156 registers, used 1 barriers, 4160 bytes smem\n"
    )
    assert kr.parse_ptxas(text) == {
        "registers": 156, "spill_bytes": 20, "spill_store_bytes": 8, "spill_load_bytes": 12,
        "local_bytes": 16, "shared_bytes": 4160,
    }
    no_smem = text.replace(", 4160 bytes smem", "")
    assert kr.parse_ptxas(no_smem)["shared_bytes"] == 0


def test_f64_instructions_count_arithmetic_not_moves():
    ptx = "\n".join([
        "\tld.global.f32 \t%f1, [%rd1];",
        "\tcvt.f64.f32 \t%fd1, %f1;",
        "\tadd.f64 \t%fd2, %fd1, %fd1;",
        "\t@%p1 bra \t$L__BB0_2;",
        "\t@!%p2 add.f64 \t%fd3, %fd2, %fd1;",
        "\tst.shared.f64 \t[%r1], %fd3;",
        "\tld.param.f64 \t%fd4, [param];",
        "\tmov.f64 \t%fd5, 0d0000000000000000;",
        "\tcvt.rn.f32.f64 \t%f2, %fd3;",
        "\tfma.rn.f32 \t%f3, %f1, %f2, %f1;",
    ])
    assert kr.f64_instructions(ptx) == {"cvt.f64.f32": 1, "add.f64": 2, "cvt.rn.f32.f64": 1}


# --- the machine code's main loop (no compiler needed: hand-written nvdisasm listings) -----------

# Two nested loops, as nvdisasm prints a cubin: the outer one (.L_x_1) loads a tile from global
# memory, the inner one (.L_x_2) does 4 FFMA in 8 instructions. Both hold the same 4 FFMA, so the
# shorter, inner, loop is the main loop.
NESTED = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
.L_x_1:
        /*0010*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0020*/                   STS [R9], R4 ;
        /*0030*/                   LDG.E R5, desc[UR4][R2.64+0x4] ;
        /*0040*/                   STS [R9+0x4], R5 ;
        /*0050*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
.L_x_2:
        /*0060*/                   LDS R10, [R8] ;
        /*0070*/                   LDS R11, [R8+0x100] ;
        /*0080*/                   FFMA R20, R10, R11.reuse, R20 ;
        /*0090*/                   FFMA R21, R10, R11, R21 ;
        /*00a0*/                   FFMA R22, R11, R10.reuse, R22 ;
        /*00b0*/                   FFMA R23, R11, R10, R23 ;
        /*00c0*/                   IADD3 R8, R8, 0x4, RZ ;
        /*00d0*/               @P0 BRA `(.L_x_2) ;
        /*00e0*/              @!P1 BRA `(.L_x_1) ;
        /*00f0*/                   EXIT ;
.L_x_3:
        /*0100*/                   BRA `(.L_x_3);
"""


def test_main_loop_is_the_inner_loop_of_equal_ffma():
    assert kr.main_loop(NESTED) == {
        "instructions": 8, "ffma": 4, "ffma_share": 0.5, "global_loads": 0, "loads_in_flight": 0,
    }


def test_main_loop_is_the_ffma_richest():
    """An outer loop with FFMA of its own beside the inner loop's has more, and wins, with every
    instruction from its label to its branch (the inner loop's included)."""
    sass = NESTED.replace("STS [R9+0x4], R5 ;", "FFMA R24, R4, R5, R24 ;")
    loop = kr.main_loop(sass)
    assert (loop["instructions"], loop["ffma"]) == (14, 5)
    assert loop["global_loads"] == 2 and loop["loads_in_flight"] == 1  # the FFMA waits for both loads


def test_loads_in_flight_counts_loads_issued_before_a_use():
    one_by_one = kr.main_loop(NESTED.replace("@P0 BRA `(.L_x_2)", "NOP"))  # only the outer loop is left
    assert (one_by_one["global_loads"], one_by_one["loads_in_flight"]) == (2, 1)
    batched = NESTED.replace("STS [R9], R4 ;", "LDG.E.64 R6, desc[UR4][R2.64+0x8] ;").replace(
        "BAR.SYNC.DEFER_BLOCKING 0x0 ;", "STS [R9], R4 ;").replace("@P0 BRA `(.L_x_2)", "NOP")
    loop = kr.main_loop(batched)
    assert (loop["global_loads"], loop["loads_in_flight"]) == (3, 3)
    # R7, the upper half of the 64-bit load into R6, is waited for too.
    waits = batched.replace("LDG.E R5, desc[UR4][R2.64+0x4] ;", "STS [R9+0x8], R7 ;")
    assert kr.main_loop(waits)["loads_in_flight"] == 2


def test_raw_listing_branches_to_addresses():
    """Raw code (nvdisasm -b SM90, how the report disassembles) has no labels: targets are addresses."""
    raw = "\n".join(line for line in NESTED.splitlines() if not line.startswith(".L_"))
    raw = raw.replace("`(.L_x_2)", "0x60").replace("`(.L_x_1)", "0x10").replace("`(.L_x_3)", "0x100")
    assert kr.main_loop(raw) == kr.main_loop(NESTED)


@pytest.mark.parametrize("sass", [
    "",
    NESTED.replace("FFMA", "FMUL"),  # loops, none with an FFMA (the self-loop at the end has none)
    NESTED.replace("@P0 BRA `(.L_x_2)", "NOP").replace("@!P1 BRA `(.L_x_1)", "@!P1 BRA `(.L_x_3)"),  # forward only
])
def test_no_ffma_loop_is_none(sass):
    assert kr.main_loop(sass) is None


def test_without_nvdisasm_ffma_share_is_null_and_said_once(monkeypatch):
    """No disassembler: every other figure is there, ffma_share is null, and the report says why
    once (in its toolchain and its progress), not per kernel."""
    target = type("Target", (), {"kernel": "k", "config": "c", "signature": "void()", "threads_per_block": 32})()
    tools = {"numba-cuda": "0", "nvvm": "0", "ptxas": "0", "ptxas_path": "ptxas", "nvdisasm": None, "nvdisasm_path": None}
    monkeypatch.setattr(kr, "toolchain", lambda: tools)
    monkeypatch.setattr(kr, "collect_targets", lambda: ([("matmul", target), ("matmul", target)], []))
    monkeypatch.setattr(kr, "compile_target", lambda t, arch, ptxas: ({"registers": 40}, b"code"))
    said = []
    result = kr.report(["sm_90"], progress=said.append)
    assert [r["ffma_share"] for r in result["kernels"]] == [None, None]
    assert [r["registers"] for r in result["kernels"]] == [40, 40]
    assert said.count(kr.NO_NVDISASM) == 1 and result["toolchain"]["sass_note"] == kr.NO_NVDISASM


def test_table_shows_failures_in_one_row():
    rec = kr._record("matmul", "(matmul)", "", "sm_90", error="LookupError: no compile_targets()")
    rows = kr.table([rec]).splitlines()
    assert len(rows) == 3 and "FAILED: LookupError" in rows[2]


# --- what the report compiles (no compiler needed) --------------------------------------------


def test_a_module_without_compile_targets_is_a_named_failure(monkeypatch):
    monkeypatch.setattr(kr, "MODULES", ("_launch",))  # a kernels module that launches nothing
    pairs, failures = kr.collect_targets()
    assert pairs == [] and len(failures) == 1
    assert failures[0]["module"] == "_launch" and "kernels/_launch: has no compile_targets()" in failures[0]["error"]


def test_targets_use_the_cuda_engines_launch_settings():
    """compile_targets() of each module must describe the launches of rawgpu's cuda engine."""
    from rawgpu.backends.kernel_backend import LAUNCH, _row_threads
    from rawgpu.kernels import elementwise, loss, optimizer, reductions

    cuda = LAUNCH["cuda"]
    threads = {(t.kernel, t.config): t.threads_per_block for m in (elementwise, reductions, loss, optimizer) for t in m.compile_targets()}
    for kernel in ("bias_act", "relu_backward", "sgd_momentum", "correct_count"):
        assert {t for (k, _), t in threads.items() if k == kernel} == {cuda["threads"]}, kernel
    col = cuda["col_sum"]
    assert threads[("col_sum", f"threads_x={col['threads_x']} threads_y={col['threads_y']}")] == col["threads_x"] * col["threads_y"]
    rows = _row_threads(loss.CLASSES, cuda["row_threads_max"])
    assert {t for (k, _), t in threads.items() if k in ("softmax_ce_rows", "mean")} == {rows}


def test_no_compiler_is_one_line_naming_the_extra(monkeypatch, capsys):
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setattr(kr, "find_ptxas", lambda: None)
    p = argparse.ArgumentParser()
    kr.add_parser(p.add_subparsers(dest="command"))
    assert kr.run(p.parse_args(["kernels", "--arch", "sm_90"])) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'rawgpu[cuda12]'" in err and err.startswith("rawgpu: error:")


def test_the_simulator_refuses_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    assert kr.main(["--arch", "sm_90"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NUMBA_ENABLE_CUDASIM" in err


# --- the real compile, once per architecture --------------------------------------------------


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{arch: (JSON result, stdout)} for sm_80 (table on stdout, JSON to a file) and sm_90
    (JSON on stdout), compiled in two subprocesses at once, without the simulator."""
    if kr.find_ptxas() is None:
        pytest.skip(f"the CUDA compiler is not installed ({kr.INSTALL_HINT})")
    tmp = tmp_path_factory.mktemp("kernel_report")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    json80 = tmp / "sm_80.json"
    cmds = {
        "sm_80": ["--arch", "sm_80", "--json", str(json80)],
        "sm_90": ["--arch", "sm_90", "--json", "-"],
    }
    # cwd outside the repository: `python -m` puts the cwd first on sys.path, and the repository's
    # rawgpu/ folder (without kernels/ inside it) would shadow the installed package.
    procs = {
        arch: subprocess.Popen([sys.executable, "-m", "rawgpu.kernel_report", *args], cwd=tmp, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for arch, args in cmds.items()
    }
    out = {}
    for arch, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=900)
        if "install it with" in stderr:
            pytest.skip(stderr.strip().splitlines()[-1])
        if arch == "sm_90":
            result = json.loads(stdout) if stdout.strip() else None
        else:
            result = json.loads(json80.read_text()) if json80.exists() else None
        assert result is not None, f"{arch}: no report (exit {proc.returncode}):\n{stderr}"
        out[arch] = (result, stdout, proc.returncode, stderr)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles(compiled, arch):
    result, _, rc, stderr = compiled[arch]
    records = result["kernels"]
    failed = [f"{r['kernel']} {r['config']}: {r['error']}" for r in records if r["error"]]
    assert not failed, "did not compile:\n" + "\n".join(failed)
    assert rc == 0, stderr
    modules = {r["module"] for r in records}
    assert modules == set(kr.MODULES), f"no kernels from {set(kr.MODULES) - modules}"
    for r in records:
        assert r["arch"] == arch
        for field in ("kernel", "config", "registers", "spill_bytes", "local_bytes", "shared_bytes",
                      "threads_per_block", "occupancy", "limiter", "f64_instructions"):
            assert r[field] is not None, (r["kernel"], field)
        assert 0 < r["occupancy"] <= 1, (r["kernel"], r["config"], r["occupancy"])


@pytest.mark.parametrize("arch", ARCHS)
def test_no_spills_no_local_memory_no_float64(compiled, arch):
    """No kernel spills or uses a stack; only the loss's mean computes in float64, on purpose
    (its float64 running sums keep the mean of thousands of losses exact to float32)."""
    for r in compiled[arch][0]["kernels"]:
        what = f"{r['kernel']} {r['config']} on {arch}"
        assert r["spill_bytes"] == 0, f"{what} spills {r['spill_bytes']} bytes"
        assert r["local_bytes"] == 0, f"{what} uses {r['local_bytes']} bytes of local memory"
        if (r["module"], r["kernel"]) not in {("loss", "mean"), ("fused", "linear_softmax_ce")}:
            assert r["f64_instructions"] == 0, f"{what} has float64 instructions: {r['f64_ops']}"


@pytest.mark.parametrize("arch", ARCHS)
def test_register_blocked_matmul_meets_the_register_budget(compiled, arch):
    """Issue 8's goal: at most 64 registers for a 4x4 tile per thread (128 for 8x8), so that
    at least 4 (2) blocks of 256 threads fit on an SM instead of 1."""
    rows = [r for r in compiled[arch][0]["kernels"] if r["kernel"] == "blocktile2d"]
    assert rows, "no blocktile2d kernel in the report"
    for r in rows:
        tm, tn = (int(re.search(rf"\b{k}=(\d+)", r["config"]).group(1)) for k in ("tm", "tn"))
        budget = 64 if tm * tn <= 16 else 128
        assert r["registers"] <= budget, f"{r['config']} on {arch}: {r['registers']} registers > {budget}"


@pytest.mark.parametrize("arch", ARCHS)
def test_matmul_kernels_report_their_ffma_share(compiled, arch):
    """Every matrix product (ladder, fused layers, convolutions) has a main loop of FFMA in its
    machine code, where nvdisasm is installed (the cuda12 extra brings it)."""
    result = compiled[arch][0]
    if result["toolchain"].get("nvdisasm") is None:
        pytest.skip(result["toolchain"]["sass_note"])
    products = [r for r in result["kernels"] if r["module"] in kr.MATMUL_MODULES and r["kernel"] != "splitk_sum"]
    assert len(products) >= 20
    for r in products:
        assert r["ffma_share"] is not None and 0 < r["ffma_share"] <= 1, (r["kernel"], r["config"], r["ffma_share"])
        assert r["ffma_share"] == r["loop_ffma"] / r["loop_instructions"]
    for r in result["kernels"]:  # the JSON has the field for every kernel, null or not
        assert "ffma_share" in r, (r["kernel"], r["config"])


def test_table_on_stdout(compiled):
    result, stdout, _, _ = compiled["sm_80"]
    rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + len(result["kernels"])


def _readme():
    with open(os.path.join(kr.REPO, "README.md")) as fh:
        return fh.read()


def test_readme_lists_every_kernel(compiled):
    result = compiled["sm_90"][0]
    start, end = kr.README_MARKERS
    text = _readme()
    section = text[text.index(start): text.index(end)]
    rows = ([c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines() if line.startswith("| "))
    listed = {(cells[0], cells[1]) for cells in rows}
    for r in result["kernels"]:
        assert (r["kernel"], r["config"]) in listed, f"README.md lacks {r['kernel']} {r['config']}: run {kr.README_COMMAND}"


def test_readme_figures_are_current(compiled):
    """The README's section is exactly what this compile generates (when it was made with the same
    toolchain: another ptxas may allocate registers differently)."""
    result = compiled["sm_90"][0]
    text = _readme()
    stamp = kr.readme_stamp(text)
    tools = {k: result["toolchain"][k] for k in ("numba-cuda", "nvvm", "ptxas")}
    tools["nvdisasm"] = result["toolchain"].get("nvdisasm") or "missing"
    if stamp != tools:
        pytest.skip(f"README.md was generated with {stamp}, this is {tools}; rerun {kr.README_COMMAND} to compare")
    expected = kr.splice(text, kr.readme_section(result), "README.md")
    assert text == expected, f"README.md's kernel report is out of date: run {kr.README_COMMAND}"
