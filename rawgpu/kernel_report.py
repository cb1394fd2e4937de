"""``rawgpu kernels``: every kernel the ``cuda`` engine launches, compiled for real, with no GPU.

Numba's CUDA simulator runs a kernel's Python semantics; it cannot tell whether the kernel
compiles, how many registers it needs, whether it spills, or how much of the GPU it can keep busy.
The real compiler can, and it needs no GPU and no driver:

    Python kernel --(Numba + NVVM)--> PTX (virtual ISA) --(ptxas)--> machine code (SASS)

``numba.cuda.compile_ptx`` does the first step for a chosen compute capability, and ``ptxas -v``
(from the ``nvidia-cuda-nvcc`` wheel that ``pip install 'rawgpu[cuda12]'`` brings) does the
second and reports what the machine code uses: registers per thread, spill and stack bytes,
static shared memory. From those and the architecture's per-SM limits follows the *theoretical
occupancy*: how many of the SM's warp slots the kernel can fill, and which resource stops it.
``nvdisasm`` (the ``nvidia-cuda-nvdisasm`` wheel, in the same extra) turns the machine code back
into text, where the report finds each kernel's main loop and its ``ffma_share``: the fraction of
its instructions that are the fused multiply-adds a matrix product exists for.

Which kernels: each module of ``rawgpu.kernels`` lists the kernels it launches, with the
compile-time configurations and argument types the ``cuda`` engine and the benchmarks use, in
its ``compile_targets()`` (the contract is ``kernels/_compile.py``).

    rawgpu kernels [--arch sm_90] [--json FILE]
    python -m rawgpu.kernel_report --arch sm_80 --arch sm_90 --json -   # several archs, JSON only
    python -m rawgpu.kernel_report --write-readme                       # regenerate README's table
    python -m rawgpu.kernel_report --check-readme                       # exit 1 if it is stale

This module imports ``numba.cuda`` only when it compiles, and refuses to compile in a process
where the simulator is on (``NUMBA_ENABLE_CUDASIM=1``): the simulator has no compiler. The
formatting and occupancy functions need neither, so tests can call them anywhere.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from dataclasses import dataclass
from importlib import metadata

#: The kernel modules, in the order a training step meets them (each has ``compile_targets()``).
MODULES = ("matmul", "elementwise", "reductions", "loss", "optimizer", "fused", "conv", "pool")

INSTALL_HINT = "pip install 'rawgpu[cuda12]'"
DEFAULT_ARCH = "sm_90"
README_MARKERS = ("<!-- kernel-report:begin -->", "<!-- kernel-report:end -->")
README_ARCH = "sm_90"
README_COMMAND = "python -m rawgpu.kernel_report --write-readme"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: What the register-blocked matmul compiled to before issue 8 (commit ec5d561, sm_90, 64x64
#: block tile, bk 8, 4x4 per thread, 256 threads, no transpose): the README's worked example.
BEFORE_REGBLOCK = {"registers": 156, "shared_bytes": 4160, "threads_per_block": 256}
#: float64 instructions in the SGD kernel's PTX when launched with Python floats (float64
#: scalars), before the kernel cast them to float32 itself (same commit and compile).
BEFORE_SGD_F64 = 50


class ReportError(Exception):
    """A problem the user can fix (no compiler, unknown architecture, ...): one line, no traceback."""


# ---------------------------------------------------------------------------------------------
# The architectures' per-SM limits (CUDA C Programming Guide, "Compute Capabilities" table, and
# the allocation rules of the CUDA Occupancy Calculator, cuda_occupancy.h)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    name: str
    cc: tuple[int, int]
    max_warps: int  # warp slots per SM (resident threads / 32)
    max_blocks: int  # resident blocks per SM
    smem_per_sm: int  # shared memory per SM at the largest carveout, bytes
    smem_per_block: int  # the most one block may use (with the dynamic opt-in), bytes
    regs_per_sm: int = 65536  # 32-bit registers in the SM's register file
    reg_unit: int = 256  # registers are handed to a warp in chunks of 256 (8 per thread)
    sub_partitions: int = 4  # the register file is split among 4 warp schedulers
    smem_unit: int = 128  # shared memory is handed to a block in chunks of 128 bytes
    smem_reserved: int = 1024  # sm_80 and later reserve 1 KiB of shared memory per block
    max_threads_per_block: int = 1024


ARCHS = {
    "sm_80": Arch("sm_80", (8, 0), max_warps=64, max_blocks=32, smem_per_sm=164 * 1024, smem_per_block=163 * 1024),
    "sm_86": Arch("sm_86", (8, 6), max_warps=48, max_blocks=16, smem_per_sm=100 * 1024, smem_per_block=99 * 1024),
    "sm_89": Arch("sm_89", (8, 9), max_warps=48, max_blocks=24, smem_per_sm=100 * 1024, smem_per_block=99 * 1024),
    "sm_90": Arch("sm_90", (9, 0), max_warps=64, max_blocks=32, smem_per_sm=228 * 1024, smem_per_block=227 * 1024),
}


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def occupancy(arch: Arch, registers: int, shared_bytes: int, threads_per_block: int) -> dict:
    """Theoretical occupancy of a kernel on one SM: how many blocks fit, and what stops more.

    A block can become resident on an SM only when *all* of its warps fit at once, so each
    resource gives a number of whole blocks, and the smallest number wins:

    - threads: the SM has ``max_warps`` warp slots (64 on sm_80/sm_90, 2048 threads);
    - blocks: at most ``max_blocks`` resident blocks, however small;
    - registers: a warp gets ``registers x 32`` registers, rounded up to a multiple of 256, from
      one of the four quarters of the 64K register file (one per warp scheduler);
    - shared memory: each block's static shared memory plus 1 KiB the hardware reserves,
      rounded up to 128 bytes, out of the SM's shared memory at the largest carveout.

    Returns blocks_per_sm, warps_per_sm, occupancy (resident warps / warp slots, 0 to 1) and the
    limiter: the resource(s) giving the smallest count, e.g. "registers" or "threads, registers".
    """
    warps_per_block = -(-threads_per_block // 32)
    regs_per_warp = _round_up(max(registers, 1) * 32, arch.reg_unit)
    warps_by_regs = (arch.regs_per_sm // arch.sub_partitions // regs_per_warp) * arch.sub_partitions
    smem_per_block = _round_up(shared_bytes + arch.smem_reserved, arch.smem_unit)
    limits = {
        "threads": arch.max_warps // warps_per_block if threads_per_block <= arch.max_threads_per_block else 0,
        "blocks": arch.max_blocks,
        "registers": warps_by_regs // warps_per_block,
        "shared memory": arch.smem_per_sm // smem_per_block if shared_bytes <= arch.smem_per_block else 0,
    }
    blocks = min(limits.values())
    return {
        "blocks_per_sm": blocks,
        "warps_per_sm": blocks * warps_per_block,
        "occupancy": blocks * warps_per_block / arch.max_warps,
        "limiter": ", ".join(name for name, count in limits.items() if count == blocks),
        "regs_per_warp": regs_per_warp,
        "warps_by_regs": warps_by_regs,
    }


# ---------------------------------------------------------------------------------------------
# The toolchain: NVVM (through numba-cuda) and ptxas (from the nvidia-cuda-nvcc wheel)
# ---------------------------------------------------------------------------------------------


def _find_tool(name: str, wheel_dirs: tuple[str, ...]) -> str | None:
    """A CUDA command-line tool: from an NVIDIA wheel first (the one pip installed beside numba-cuda),
    else from CUDA_HOME or CUDA_PATH, else from PATH."""
    candidates = []
    try:
        import nvidia  # the namespace package the NVIDIA wheels install into

        candidates += [os.path.join(base, sub, "bin", name) for base in nvidia.__path__ for sub in wheel_dirs]
    except ImportError:
        pass
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", name))
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def find_ptxas() -> str | None:
    """ptxas from the nvidia-cuda-nvcc wheel (the one that matches its NVVM), else CUDA_HOME or PATH."""
    return _find_tool("ptxas", ("cuda_nvcc",))


def find_nvdisasm() -> str | None:
    """nvdisasm (the disassembler of machine code) from the nvidia-cuda-nvdisasm wheel, else CUDA_HOME
    or PATH. The 13.x wheel installs it under nvidia/cu13/ and reads the cubins of ptxas 12.x too."""
    return _find_tool("nvdisasm", ("cu13", "cuda_nvdisasm"))


def _simulator_requested() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def toolchain() -> dict:
    """Check that both compilers are here; their versions. Raises ReportError naming the fix."""
    if _simulator_requested():
        raise ReportError(
            "NUMBA_ENABLE_CUDASIM is set: the CUDA simulator cannot compile kernels; "
            "run this without it (env -u NUMBA_ENABLE_CUDASIM ...)"
        )
    ptxas = find_ptxas()
    if ptxas is None:
        raise ReportError(f"ptxas (the CUDA assembler) is not installed; install it with: {INSTALL_HINT}")
    try:
        from numba.cuda.cudadrv import nvvm

        nvvm_version = ".".join(map(str, nvvm.NVVM().get_version()))
    except ImportError:
        raise ReportError(f"numba-cuda is not installed; install it with: {INSTALL_HINT}") from None
    except Exception as exc:  # NvvmSupportError and friends: libNVVM cannot be found or loaded
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReportError(f"NVVM (the CUDA compiler) is not available ({detail}); install it with: {INSTALL_HINT}") from None
    _probe_compile()
    nvdisasm = find_nvdisasm()
    return {
        "numba-cuda": _dist_version("numba-cuda"),
        "nvvm": nvvm_version,
        "ptxas": _tool_version(ptxas),
        "ptxas_path": ptxas,
        # The disassembler is optional: without it the report has everything but ffma_share.
        "nvdisasm": _tool_version(nvdisasm) if nvdisasm else None,
        "nvdisasm_path": nvdisasm,
    }


def _tool_version(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    release = re.search(r"release [\d.]+, V([\d.]+)", out)
    return release.group(1) if release else out.strip().splitlines()[-1]


#: Why ffma_share is null for every kernel when nvdisasm is missing (said once, not per kernel).
NO_NVDISASM = f"nvdisasm (the CUDA disassembler) is not installed, so ffma_share is not measured; install it with: {INSTALL_HINT}"


def _probe_compile() -> None:
    """Compile an empty kernel: NVVM alone is not enough (numba-cuda also loads NVRTC and the CUDA
    headers, which the cuda12 extra brings), and a machine may have some pieces and not others."""
    from numba import cuda

    def empty(a):  # noqa: ARG001 - a kernel that does nothing, to see that one compiles
        pass

    try:
        cuda.compile_ptx(empty, "void(float32[::1])", cc=(8, 0))
    except Exception as exc:  # DynamicLibNotFoundError (no NVRTC), NvvmError, ...: the toolchain is incomplete
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReportError(f"the CUDA compiler cannot compile here ({detail}); install it with: {INSTALL_HINT}") from None


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def default_arch() -> str:
    """The present GPU's architecture (as CuPy sees it), else sm_90."""
    from rawgpu.engine import probe_gpu

    usable, _ = probe_gpu()
    if not usable:
        return DEFAULT_ARCH
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    return f"sm_{props['major']}{props['minor']}"


def arch_of(name: str) -> Arch:
    arch = ARCHS.get(name)
    if arch is None:
        raise ReportError(f"--arch {name}: no occupancy limits for it here; choose one of {', '.join(ARCHS)}")
    return arch


# ---------------------------------------------------------------------------------------------
# Compiling one kernel and reading what ptxas says
# ---------------------------------------------------------------------------------------------

_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
# A PTX instruction: an optional predicate guard, then the opcode with its type suffixes.
_PTX_OP = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*)\s")
# f64 loads, stores and moves shift bits around without the FP64 units: not counted.
_F64_MOVES = ("ld", "st", "mov", "selp", "cvta", "shfl")


def parse_ptxas(text: str) -> dict:
    """Registers, spills, stack and static shared memory of the entry function (the kernel)."""
    entry = text.find("Compiling entry function")
    if entry < 0:
        raise ValueError(f"ptxas printed no entry function:\n{text}")
    body = text[entry:]
    props, used = _PROPS.search(body), _USED.search(body)
    if props is None or used is None:
        raise ValueError(f"could not read ptxas's resource usage:\n{text}")
    smem = _SMEM.search(body[used.start():].splitlines()[0])
    stores, loads = int(props.group(2)), int(props.group(3))
    return {
        "registers": int(used.group(1)),
        "spill_bytes": stores + loads,
        "spill_store_bytes": stores,
        "spill_load_bytes": loads,
        "local_bytes": int(props.group(1)),
        "shared_bytes": int(smem.group(1)) if smem else 0,
    }


def f64_instructions(ptx: str) -> Counter:
    """The float64 arithmetic, comparison and conversion instructions in PTX, by opcode.

    Counted in the PTX because the nvidia-cuda-nvcc wheel ships no disassembler for the machine
    code. ptxas never invents float64 work that the PTX does not ask for, so zero here is zero
    in the machine code; a nonzero count is a lower bound (a PTX ``div.rn.f64`` becomes several
    FP64 machine instructions). Checked once against the machine code disassembled by nvdisasm
    (the separate nvidia-cuda-nvdisasm wheel): every kernel with no f64 PTX instruction had no
    FP64 machine instruction on sm_80 and sm_90, and the loss's ``mean``, 17 here, had 42 there.
    """
    ops = Counter()
    for line in ptx.splitlines():
        match = _PTX_OP.match(line)
        if match is None:
            continue
        opcode = match.group(1)
        parts = opcode.split(".")
        if "f64" in parts[1:] and parts[0] not in _F64_MOVES:
            ops[opcode] += 1
    return ops


# ---------------------------------------------------------------------------------------------
# The machine code (SASS): how much of a matmul's main loop is arithmetic
# ---------------------------------------------------------------------------------------------

# One instruction as nvdisasm prints it: "/*2390*/  @!P0 FFMA R56, R95, R93.reuse, R56 ;" (its
# address, an optional predicate guard, the opcode with its suffixes, the operands).
_SASS_INSTR = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_SASS_LABEL = re.compile(r"^(\.L_\w+):")
# A branch target: a label, "`(.L_x_16)", from a cubin; an address, "0x2390", from raw code.
_SASS_TARGET = re.compile(r"`\((\.L_\w+)\)|^(0x[0-9a-f]+)\b")
_SASS_REG = re.compile(r"\bR(\d+)\b")  # a general register (not RZ, not a uniform URn)
_LOAD_WIDTH = {".64": 2, ".128": 4}  # registers an LDG.E.64 / LDG.E.128 writes


def parse_sass(text: str) -> list[tuple[int, str, str, int | None]]:
    """nvdisasm's output as (address, opcode, operands, branch target address or None) tuples."""
    instrs, labels, pending = [], {}, []
    for line in text.splitlines():
        label = _SASS_LABEL.match(line)
        if label:
            pending.append(label.group(1))  # a label names the address of the next instruction
            continue
        match = _SASS_INSTR.match(line)
        if match:
            addr = int(match.group(1), 16)
            labels.update((name, addr) for name in pending)
            pending.clear()
            instrs.append((addr, match.group(2), match.group(3)))
    out = []
    for addr, opcode, operands in instrs:
        target = _SASS_TARGET.search(operands) if opcode.split(".")[0] == "BRA" else None
        dest = None
        if target:
            dest = labels.get(target.group(1)) if target.group(1) else int(target.group(2), 16)
        out.append((addr, opcode, operands, dest))
    return out


def _loads_in_flight(body) -> int:
    """The most global loads (LDG) the code issues before an instruction needs one's result.

    A load takes hundreds of cycles; the loads issued before the first use of any of them wait
    together. ``load, store, load, store`` keeps one in flight; all loads first, then all stores,
    keeps them all in flight. Read in program order, as issued (no branch is followed)."""
    pending: set[int] = set()
    in_flight = most = 0
    for _, opcode, operands, _ in body:
        regs = [int(r) for r in _SASS_REG.findall(operands)]
        dest, sources = (regs[:1], regs[1:]) if opcode.startswith("LDG") else ([], regs)
        if pending.intersection(sources):  # this instruction waits for the loads in flight
            pending.clear()
            in_flight = 0
        if dest:
            width = next((w for suffix, w in _LOAD_WIDTH.items() if suffix in opcode), 1)
            pending.update(range(dest[0], dest[0] + width))
            in_flight += 1
            most = max(most, in_flight)
    return most


def main_loop(sass: str) -> dict | None:
    """The main loop of a kernel's machine code and how much of it is FFMA, or None without one.

    A loop is a backward branch: a ``BRA`` to an address at or before its own; its body runs from
    that address to the branch, both included (with several branches back to one address, to the
    last). The main loop is the one with the most FFMA (fused multiply-add, the two FLOPs of a
    matmul); of loops with as many, the shortest, so that an inner loop wins over the loops around
    it, which contain it and its FFMA. Returns its ``instructions``, ``ffma``, ``ffma_share``
    (FFMA / instructions), ``global_loads`` (LDG) and ``loads_in_flight`` (see
    :func:`_loads_in_flight`); None when no loop has an FFMA.
    """
    instrs = parse_sass(sass)
    position = {addr: i for i, (addr, *_) in enumerate(instrs)}
    ends: dict[int, int] = {}  # first instruction of a loop -> its last backward branch
    for i, (addr, _, _, dest) in enumerate(instrs):
        if dest is not None and dest <= addr and dest in position:
            ends[position[dest]] = i
    best = None
    for start, end in ends.items():
        body = instrs[start: end + 1]
        ffma = sum(opcode.split(".")[0] == "FFMA" for _, opcode, _, _ in body)
        if ffma and (best is None or (ffma, -len(body)) > (best[0], -len(best[1]))):
            best = (ffma, body)
    if best is None:
        return None
    ffma, body = best
    return {
        "instructions": len(body),
        "ffma": ffma,
        "ffma_share": ffma / len(body),
        "global_loads": sum(opcode.startswith("LDG") for _, opcode, _, _ in body),
        "loads_in_flight": _loads_in_flight(body),
    }


def cubin_code(cubin: bytes) -> bytes:
    """The machine code of a cubin: its ``.text.*`` sections (one per function), in file order.

    A cubin is an ELF64 file; each section header (at e_shoff, e_shnum of them, e_shentsize bytes
    each) gives a name (an offset into the section-name table, section e_shstrndx), an offset and
    a size. SASS instructions are 16 bytes on sm_70 and later, so the code of several kernels can
    be laid end to end and disassembled as one raw binary."""
    shoff = struct.unpack_from("<Q", cubin, 0x28)[0]
    entsize, count, names_index = struct.unpack_from("<HHH", cubin, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", cubin, shoff + i * entsize) for i in range(count)]
    names_at = headers[names_index][4]

    def name(header):
        start = names_at + header[0]
        return cubin[start: cubin.index(b"\0", start)]

    return b"".join(cubin[h[4]: h[4] + h[5]] for h in headers if name(h).startswith(b".text."))


_SASS_CACHE: dict[tuple[str, bytes], dict | None] = {}


def main_loops(codes: list[bytes], arch: Arch, nvdisasm: str) -> list[dict | None]:
    """:func:`main_loop` of each kernel's machine code (from :func:`cubin_code`).

    nvdisasm spends about 0.3 s starting up and then disassembles 20 KiB of code in a few ms, so
    the codes not seen before are laid end to end and disassembled in one call, as a raw binary
    (``-b SM90``), and the listing is cut at each kernel's first address. Kernels that compile to
    the same code are disassembled once."""
    fresh = list(dict.fromkeys(c for c in codes if (arch.name, hashlib.sha256(c).digest()) not in _SASS_CACHE))
    if fresh:
        with tempfile.TemporaryDirectory(prefix="rawgpu-nvdisasm-") as tmp:
            path = os.path.join(tmp, "code.bin")
            with open(path, "wb") as fh:
                fh.write(b"".join(fresh))
            proc = subprocess.run([nvdisasm, "-b", arch.name.replace("sm_", "SM"), path], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nvdisasm failed: {(proc.stderr or proc.stdout).strip()}")
        starts = list(itertools.accumulate((len(c) for c in fresh[:-1]), initial=0))
        pieces = [[] for _ in fresh]
        for line in proc.stdout.splitlines():  # raw code has no labels: every line we need has an address
            match = _SASS_INSTR.match(line)
            if match:
                pieces[bisect.bisect_right(starts, int(match.group(1), 16)) - 1].append(line)
        for code, piece in zip(fresh, pieces):
            _SASS_CACHE[(arch.name, hashlib.sha256(code).digest())] = main_loop("\n".join(piece))
    return [_SASS_CACHE[(arch.name, hashlib.sha256(c).digest())] for c in codes]


def compile_target(target, arch: Arch, ptxas: str) -> tuple[dict, bytes]:
    """Compile one CompileTarget for ``arch``: its record (see :func:`resources`), less the main
    loop's fields, and its machine code (see :func:`cubin_code`) for :func:`main_loops`."""
    from numba import cuda

    opts = getattr(target.dispatcher, "targetoptions", {})
    # The kernel's own compile options (fastmath and friends), as its dispatcher would use them.
    kwargs = {key: opts[key] for key in ("fastmath", "lineinfo", "debug", "opt", "launch_bounds") if opts.get(key) is not None}
    ptx, _ = cuda.compile_ptx(target.dispatcher.py_func, target.signature, cc=arch.cc, **kwargs)
    with tempfile.TemporaryDirectory(prefix="rawgpu-ptxas-") as tmp:
        src, cubin = os.path.join(tmp, "kernel.ptx"), os.path.join(tmp, "kernel.cubin")
        with open(src, "w") as fh:
            fh.write(ptx)
        proc = subprocess.run([ptxas, "-v", f"-arch={arch.name}", src, "-o", cubin], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ptxas failed: {(proc.stderr or proc.stdout).strip()}")
        with open(cubin, "rb") as fh:
            code = cubin_code(fh.read())
    res = parse_ptxas(proc.stdout + proc.stderr)
    f64 = f64_instructions(ptx)
    occ = occupancy(arch, res["registers"], res["shared_bytes"], target.threads_per_block)
    record = {
        **res,
        "threads_per_block": target.threads_per_block,
        "occupancy": occ["occupancy"],
        "blocks_per_sm": occ["blocks_per_sm"],
        "warps_per_sm": occ["warps_per_sm"],
        "max_warps_per_sm": arch.max_warps,
        "limiter": occ["limiter"],
        "f64_instructions": sum(f64.values()),
        "f64_ops": dict(sorted(f64.items())),
    }
    return record, code


def _loop_fields(loop: dict | None) -> dict:
    """The main loop's figures as record fields; all None for a kernel with no FFMA loop (or
    where nvdisasm is missing: the report says why once, in its toolchain)."""
    loop = loop or {}
    return {
        "ffma_share": loop.get("ffma_share"),
        "loop_instructions": loop.get("instructions"),
        "loop_ffma": loop.get("ffma"),
        "loop_global_loads": loop.get("global_loads"),
        "loop_loads_in_flight": loop.get("loads_in_flight"),
    }


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _record(module, kernel, config, arch, signature=None, threads=None, error=None, **fields) -> dict:
    return {
        "module": module, "kernel": kernel, "config": config, "arch": arch,
        "signature": signature, "threads_per_block": threads, "error": error, **fields,
    }


def resources(targets, arch: str = DEFAULT_ARCH, *, module: str | None = None, tools: dict | None = None) -> list[dict]:
    """Compile ``targets`` (CompileTargets) for ``arch``: one record each, failures included.

    What the benchmarks call to stamp a kernel's registers and occupancy beside its timings:

        from rawgpu.kernel_report import resources
        [rec] = resources([target], "sm_90")   # rec["registers"], rec["occupancy"], rec["limiter"]

    A record has kernel, config, arch, signature, registers, spill_bytes (stores + loads),
    local_bytes (the stack frame: local memory per thread), shared_bytes (static),
    threads_per_block, occupancy (0 to 1), blocks_per_sm, warps_per_sm, limiter,
    f64_instructions, f64_ops, and the main loop's ffma_share, loop_instructions, loop_ffma,
    loop_global_loads and loop_loads_in_flight (None without an FFMA loop or without nvdisasm);
    a kernel that failed to compile has ``error`` set and no figures. Raises ReportError where
    the compiler is missing. ``module``: one name for all, or a list, one per target. ``tools``:
    :func:`toolchain`'s answer, when the caller has it already.
    """
    spec = arch_of(arch)
    tools = tools or toolchain()
    modules = module if isinstance(module, list) else [module] * len(targets)
    records, codes = [], []
    for t, mod in zip(targets, modules):
        base = dict(module=mod, kernel=t.kernel, config=t.config, arch=arch, signature=t.signature, threads=t.threads_per_block)
        try:
            fields, code = compile_target(t, spec, tools["ptxas_path"])
            records.append(_record(**base, **fields))
            codes.append(code)
        except Exception as exc:  # a kernel that does not compile is a finding, not a crash
            records.append(_record(**base, error=_one_line(exc)))
            codes.append(None)
    _add_main_loops(records, codes, spec, tools["nvdisasm_path"])
    return records


def _add_main_loops(records: list[dict], codes: list, spec: Arch, nvdisasm: str | None) -> None:
    """Each compiled record's main-loop fields: None where nvdisasm is missing (the report says so
    once) and, if nvdisasm fails, the one-line reason in ``sass_error``."""
    done = [(rec, code) for rec, code in zip(records, codes) if code is not None]
    loops, error = [None] * len(done), None
    if nvdisasm and done:
        try:
            loops = main_loops([code for _, code in done], spec, nvdisasm)
        except Exception as exc:  # a disassembler that cannot read the code costs a column, not the report
            error = _one_line(exc)
    for (rec, _), loop in zip(done, loops):
        rec.update(_loop_fields(loop))
        if error:
            rec["sass_error"] = error


def collect_targets() -> tuple[list[tuple[str, object]], list[dict]]:
    """Every module's CompileTargets as (module, target) pairs, and a failure record per module
    that cannot say what it launches (it does not import, or has no ``compile_targets()``)."""
    import importlib

    pairs, failures = [], []
    for name in MODULES:
        try:
            module = importlib.import_module(f"rawgpu.kernels.{name}")
            fn = getattr(module, "compile_targets", None)
            if fn is None:
                raise LookupError(f"kernels/{name}: has no compile_targets(), so its kernels cannot be compiled here")
            pairs += [(name, target) for target in fn()]
        except Exception as exc:
            failures.append(_record(name, f"({name})", "", None, error=_one_line(exc)))
    return pairs, failures


def report(archs, *, progress=None) -> dict:
    """Compile every kernel for each architecture in ``archs``. Returns
    ``{"toolchain": {...}, "kernels": [record, ...]}``, records in module order, arch by arch."""
    specs = [arch_of(a) for a in archs]
    tools = toolchain()
    pairs, failures = collect_targets()
    records = []
    for spec in specs:
        if progress:
            progress(f"compiling {len(pairs)} kernels for {spec.name} (NVVM {tools['nvvm']}, ptxas {tools['ptxas']}) ...")
        records += resources([t for _, t in pairs], spec.name, module=[m for m, _ in pairs], tools=tools)
        records += [{**f, "arch": spec.name} for f in failures]
    if tools["nvdisasm_path"] is None and progress:
        progress(NO_NVDISASM)
    public = {k: v for k, v in tools.items() if not k.endswith("_path")}
    if tools["nvdisasm_path"] is None:
        public["sass_note"] = NO_NVDISASM
    return {"toolchain": public, "kernels": records}


# ---------------------------------------------------------------------------------------------
# Tables and the README section
# ---------------------------------------------------------------------------------------------

COLUMNS = ("kernel", "configuration", "registers", "spills (B)", "stack (B)", "shared (B)",
           "threads/block", "occupancy", "limited by", "f64 instr.", "FFMA share of main loop")

#: The modules whose kernels are matrix products (the ladder, the fused layers, the convolutions
#: as implicit GEMMs): the table shows their ffma_share; the JSON has it for every kernel.
MATMUL_MODULES = ("matmul", "fused", "conv")


def _ffma_cell(rec: dict) -> str:
    if rec.get("module") not in MATMUL_MODULES:
        return ""
    if rec.get("ffma_share") is None:
        return "-"  # no loop with an FFMA (or no nvdisasm: said once, under the table)
    return f"{rec['ffma_share']:.1%} ({rec['loop_ffma']}/{rec['loop_instructions']})"


def _row(rec: dict) -> list[str]:
    if rec.get("error"):
        return [rec["kernel"], rec["config"] or "", "FAILED: " + rec["error"], *[""] * (len(COLUMNS) - 3)]
    occ = f"{rec['occupancy']:.1%} ({rec['warps_per_sm']}/{rec['max_warps_per_sm']} warps)"
    return [rec["kernel"], rec["config"], str(rec["registers"]), str(rec["spill_bytes"]), str(rec["local_bytes"]),
            str(rec["shared_bytes"]), str(rec["threads_per_block"]), occ, rec["limiter"], str(rec["f64_instructions"]),
            _ffma_cell(rec)]


def table(records: list[dict]) -> str:
    """A Markdown table, one row per record (for the terminal and the README alike)."""
    rows = [list(COLUMNS), ["---"] * len(COLUMNS)] + [_row(r) for r in records]
    return "\n".join("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows)


def _find(records, *kernels):
    """The first record of the first kernel name present (its untransposed config first)."""
    for name in kernels:
        hits = [r for r in records if r["kernel"] == name and not r.get("error")]
        if hits:
            return next((r for r in hits if r["config"].endswith("NN")), hits[0])
    return None


def _para(text: str) -> str:
    return textwrap.fill(text, width=100, break_long_words=False, break_on_hyphens=False)


def _item(text: str) -> str:
    return textwrap.fill(text, width=100, initial_indent="- ", subsequent_indent="  ",
                         break_long_words=False, break_on_hyphens=False)


def readme_section(result: dict, arch: str = README_ARCH) -> str:
    """The README's generated section: the table for ``arch`` and an explanation for learners.

    Every number comes from the compile: the table's from this one, the worked example's from
    the same compile before issue 8 (BEFORE_REGBLOCK), run through the same occupancy rules.
    """
    spec = ARCHS[arch]
    records = [r for r in result["kernels"] if r["arch"] == arch]
    tools = result["toolchain"]
    b = BEFORE_REGBLOCK
    before = occupancy(spec, b["registers"], b["shared_bytes"], b["threads_per_block"])
    warps_per_block = b["threads_per_block"] // 32
    quarter = spec.regs_per_sm // spec.sub_partitions
    ok = [r for r in records if not r.get("error")]

    out = [
        f"<!-- generated by {README_COMMAND}; do not edit by hand -->",
        _para(
            f"Every kernel the `cuda` engine launches, at the configuration and argument types it launches "
            f"with, compiled for {arch} by NVVM and ptxas on a machine with no GPU (`rawgpu kernels --arch {arch}`; "
            f"numba-cuda {tools['numba-cuda']}, NVVM {tools['nvvm']}, ptxas {tools['ptxas']}, "
            f"nvdisasm {tools.get('nvdisasm') or 'missing'}). Occupancy is "
            "theoretical: what the resources allow, before any memory stall. `f64 instr.` counts float64 "
            "arithmetic and conversions in the PTX (zero there is zero in the machine code). `FFMA share` "
            "(matrix products only) is the fraction of fused multiply-adds among the instructions of the "
            "kernel's main loop in the machine code, with the FFMA and instruction counts in brackets."
        ),
        table(records),
        _para(
            "**Registers per thread.** Registers are the fastest storage a thread has, and each thread has "
            "its own. The compiler decides how many a kernel needs (its variables, accumulators, addresses); "
            "if it needs more than it may use, it *spills* the rest to local memory, which is as slow as "
            "global memory. `spills` and `stack` above are that local memory: zero is what we want."
        ),
        _para(
            f"**Occupancy.** An {arch} SM keeps up to {spec.max_warps} warps (of 32 threads) resident at once "
            "and switches between them every cycle: while one warp waits hundreds of cycles for memory, others "
            "compute. Occupancy is the fraction of those warp slots a kernel can fill. A block becomes "
            "resident only when all its warps fit, so the scarcest resource sets the limit: the "
            f"{spec.max_warps} warp slots (`threads`), {spec.max_blocks} blocks per SM (`blocks`), the "
            f"{spec.regs_per_sm} registers of the register file (`registers`), or "
            f"{spec.smem_per_sm // 1024} KiB of shared memory (`shared memory`)."
        ),
        _para(
            "**FFMA share of the main loop.** A matrix product's useful work is its fused multiply-adds: one "
            "FFMA instruction is `c += a * b` for each of a warp's 32 threads, two FLOPs each. Everything else "
            "in the loop over k (shared-memory loads, their address arithmetic, the loop counter and its "
            f"branch) takes issue slots from them. Each of an {arch} SM's {spec.sub_partitions} warp schedulers "
            "issues one instruction per cycle, and its FP32 units finish one warp's FFMA per cycle, so a loop "
            "whose instructions are 25% FFMA can reach at most 25% of the FP32 peak, however well memory "
            "keeps up; raising the share raises that ceiling. It is a ceiling, not a prediction: memory "
            "stalls and occupancy come on top. The report finds the loop in the machine code that nvdisasm "
            "disassembles (a branch back to an earlier instruction; its body runs from there to the branch): "
            "the main loop is the one with the most FFMA, and of equals the shortest, so that the inner loop "
            "over a tile's k wins over the loops around it. The JSON (`--json`) has it for every kernel "
            "(null where no loop has an FFMA) with the loop's `loop_instructions`, `loop_ffma`, "
            "`loop_global_loads`, and `loop_loads_in_flight`: the most global loads the loop issues before "
            "it must wait for one (1 when each load is stored before the next is issued)."
        ),
        _para(
            f"**Why {b['registers']} registers left 7 of 8 warp slots empty.** Before this report existed, the "
            f"register-blocked matmul (64x64 block tile, 4x4 outputs per thread, {b['threads_per_block']} "
            f"threads = {warps_per_block} warps per block) compiled to {b['registers']} registers per thread. "
            f"A warp then needs {b['registers']} x 32 = {b['registers'] * 32} registers, handed out in chunks "
            f"of {spec.reg_unit}: {before['regs_per_warp']}. The register file is split among the SM's "
            f"{spec.sub_partitions} warp schedulers, {quarter} registers each, and {quarter} / "
            f"{before['regs_per_warp']} = {quarter / before['regs_per_warp']:.1f}: "
            f"{before['warps_by_regs'] // spec.sub_partitions} whole warps fit in each, "
            f"{before['warps_by_regs']} warps per SM. A block needs {warps_per_block}, so only "
            f"{before['blocks_per_sm']} block fits: {before['warps_per_sm']} of {spec.max_warps} warp slots, "
            f"{before['occupancy']:.1%} occupancy, limited by {before['limiter']}. The other "
            f"{spec.max_warps - before['warps_per_sm']} slots stayed empty, and with them the warps that "
            "could have hidden each other's memory latency."
        ),
    ]

    fixes = []
    blocked = _find(records, "blocktile2d", "regblock")
    if blocked is not None:
        fixes.append(
            f"The register-blocked matmul (`{blocked['kernel']}`, {blocked['config']}): {b['registers']} "
            f"registers and {before['occupancy']:.1%} occupancy before; now {blocked['registers']} registers, "
            f"{blocked['occupancy']:.1%} ({blocked['warps_per_sm']}/{spec.max_warps} warps), limited by "
            f"{blocked['limiter']}. Its module's essay says how."
        )
    fixes += [
        "`softmax_ce_rows`, `mean` and `correct_count` did not compile without a GPU at all: their shared "
        "tree-reduction helpers were `@cuda.jit(device=True)` functions, and numba-cuda compiles a device "
        "function for the compute capability of the *current GPU*, which it asks the driver for. The "
        'helpers are now declared `inline="always"`: Numba pastes their code into each kernel before '
        "typing, so they compile for whatever architecture the kernel is compiled for. The kernels use the "
        "same registers as before (NVVM had inlined the helpers anyway), and the simulator still calls them "
        "as functions.",
        "The SGD kernel computes in float32 whatever type its learning rate, momentum and weight decay "
        "arrive as. A Python float is a float64 to Numba, and one float64 scalar turned the whole update "
        f"into float64 arithmetic: {BEFORE_SGD_F64} float64 instructions, which an H100 runs at half the "
        "float32 rate and a consumer GPU at 1/64. The launcher always passed float32; the kernel now also "
        "casts once, up front.",
    ]
    f64 = [r for r in ok if r["f64_instructions"]]
    if f64:
        fixes.append(
            "Deliberate float64: " + "; ".join(f"`{r['kernel']}` ({r['f64_instructions']})" for r in f64)
            + ". The mean of the per-row losses adds up to thousands of terms per thread in float64 so that no "
            "digits are lost; it runs as one small block once per training step, so its FP64 cost is nil."
        )
    out.append("**What each fix changed.**\n\n" + "\n".join(_item(f) for f in fixes))

    summary = "**Where things stand.**"
    if ok:
        worst = max(ok, key=lambda r: r["registers"])
        summary += (
            f" The most registers any kernel uses is {worst['registers']} (`{worst['kernel']}`, "
            f"{worst['config']}), for {worst['occupancy']:.1%} occupancy, limited by {worst['limiter']}."
        )
    shares = [r for r in ok if r.get("module") in MATMUL_MODULES and r.get("ffma_share") is not None]
    if shares:
        low, high = min(shares, key=lambda r: r["ffma_share"]), max(shares, key=lambda r: r["ffma_share"])
        summary += (
            f" The FFMA share of the matrix products' main loops runs from {low['ffma_share']:.1%} "
            f"(`{low['kernel']}`, {low['config']}) to {high['ffma_share']:.1%} (`{high['kernel']}`, {high['config']})."
        )
    spilling = [r for r in ok if r["spill_bytes"]]
    summary += " No kernel spills." if not spilling else " Spilling: " + ", ".join(f"`{r['kernel']}` {r['config']}" for r in spilling) + "."
    failed = [r for r in records if r.get("error")]
    if failed:
        summary += " Did not compile: " + ", ".join(f"`{r['kernel']}`" for r in failed) + " (see the table)."
    out.append(_para(summary))
    return "\n\n".join(out) + "\n"


def splice(text: str, body: str, path: str) -> str:
    start, end = README_MARKERS
    i, j = text.find(start), text.find(end)
    if i < 0 or j < 0 or j < i:
        raise ReportError(f"{path}: the markers {start} ... {end} are missing or out of order")
    return text[: i + len(start)] + "\n" + body + text[j:]


def readme_stamp(text: str) -> dict | None:
    """The toolchain versions a README section was generated with (None if there is none)."""
    start, end = README_MARKERS
    section = text[text.find(start): text.find(end)]
    match = re.search(r"numba-cuda (\S+), NVVM (\S+), ptxas (\S+), nvdisasm (\S+)\)", section)
    if match is None:
        return None
    return dict(zip(("numba-cuda", "nvvm", "ptxas", "nvdisasm"), match.groups()))


# ---------------------------------------------------------------------------------------------
# Command line: ``rawgpu kernels`` (add_parser/run) and ``python -m rawgpu.kernel_report``
# ---------------------------------------------------------------------------------------------


def _add_arguments(p: argparse.ArgumentParser, *, several: bool) -> None:
    help_arch = f"target architecture, one of {', '.join(ARCHS)} (default: the GPU present, else {DEFAULT_ARCH})"
    if several:
        p.add_argument("--arch", action="append", choices=list(ARCHS), help=help_arch + "; repeat for several")
    else:
        p.add_argument("--arch", choices=list(ARCHS), help=help_arch)
    p.add_argument("--json", metavar="FILE", help="also write one record per kernel as JSON ('-': only the JSON, to stdout)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``kernels`` to the ``rawgpu`` command's subparsers."""
    p = subparsers.add_parser(
        "kernels",
        help="compile every kernel for a GPU architecture (no GPU needed): registers, spills, shared memory, occupancy",
        description=(
            "Compile every kernel the cuda engine launches (its configurations and argument types, "
            "from each kernel module's compile_targets()) through NVVM and ptxas, and report "
            f"registers, spills, shared memory and theoretical occupancy. Needs: {INSTALL_HINT}"
        ),
    )
    _add_arguments(p, several=False)
    return p


def _write_json(result: dict, path: str) -> None:
    if path == "-":
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    from rawgpu.atomic import atomic_file

    with atomic_file(path, "w") as fh:
        json.dump(result, fh, indent=1)
        fh.write("\n")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run(archs: list[str], json_path: str | None) -> int:
    if json_path not in (None, "-"):
        from rawgpu.outputs import check_file

        check_file(json_path, "--json")  # a bad path fails now, not after a minute of compiling
    result = report(archs, progress=_log)
    if json_path is not None:
        _write_json(result, json_path)
    if json_path != "-":
        for arch in archs:
            print(
                f"{arch}: every kernel as the cuda engine launches it (configurations and argument types "
                "from each kernel module's compile_targets()); occupancy is theoretical, per SM"
            )
            print(table([r for r in result["kernels"] if r["arch"] == arch]))
    failed = [r for r in result["kernels"] if r.get("error")]
    if failed:
        _log(f"rawgpu: error: {len(failed)} kernel(s) did not compile (see the table)")
        return 1
    return 0


def run(args) -> int:
    """``rawgpu kernels``: one line on stderr and exit 1 for anything the user can fix."""
    try:
        arch = args.arch or default_arch()
        arch_of(arch)
        return _run([arch], args.json)
    except (ReportError, OSError, ValueError) as exc:  # OutputError (a bad --json path) is a ValueError
        print(f"rawgpu: error: {exc}", file=sys.stderr)
        return 1


def _readme_main(args) -> int:
    path = args.readme
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError as exc:
        raise ReportError(f"{path}: {exc.strerror}") from None
    splice(text, "", path)  # markers present? (before a minute of compiling)
    result = report([README_ARCH], progress=_log)
    new = splice(text, readme_section(result), path)
    if args.check_readme:
        if new != text:
            _log(f"{path}: the kernel report is out of date; run {README_COMMAND}")
            return 1
        return 0
    if new != text:
        from rawgpu.atomic import atomic_file

        with atomic_file(path, "w") as fh:
            fh.write(new)
    _log(f"{path}: kernel report {'updated' if new != text else 'already current'}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rawgpu.kernel_report", description=__doc__.split("\n\n")[0])
    _add_arguments(p, several=True)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--write-readme", action="store_true", help=f"regenerate README.md's section for {README_ARCH}")
    group.add_argument("--check-readme", action="store_true", help="exit 1 if README.md's section is out of date")
    p.add_argument("--readme", default=os.path.join(REPO, "README.md"), metavar="PATH", help="default: the repository's README.md")
    args = p.parse_args(argv)
    try:
        if args.write_readme or args.check_readme:
            return _readme_main(args)
        return _run(args.arch or [default_arch()], args.json)
    except (ReportError, OSError, ValueError) as exc:  # OutputError (a bad --json path) is a ValueError
        print(f"rawgpu: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
