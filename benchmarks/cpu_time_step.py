"""Where a CPU train step's CPU time goes, sampled with Linux perf: the truer split on a CPU.

    python benchmarks/cpu_time_step.py --config=ner --config.train.batch_size=8 [--steps 5] [--system]

profile_step.py's thunk trace times when each XLA thunk ran, but a matmul that XLA:CPU hands to
Eigen runs asynchronously: its thunk ends at the launch. Sampling the CPU sees every cycle. XLA's
JIT-compiled kernels have no symbols for perf, so this script writes /tmp/perf-<pid>.map from
LLVM's GDB JIT registration list (each kernel named by its HLO fusion), then samples its own
steps. Kernels JIT-compiled elsewhere (oneDNN's matmul kernels that Eigen calls) stay unnamed:
they are counted as "unnamed JIT code". --system samples both cores, so idle time shows.

Needs `perf` and `nm` on the PATH and a jaxlib whose libjax_common.so keeps its symbol table.
Run it on a quiet machine under gptjax's malloc settings:
GLIBC_TUNABLES="$(python -c 'from gptjax import malloc; print(malloc.TUNABLES)')".
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402

from gptjax.bench.timing import warm_up  # noqa: E402
from gptjax.bench.train_step import GptjaxSteps  # noqa: E402
from gptjax.cli import config_overrides  # noqa: E402
from gptjax.config import apply_overrides, load_config  # noqa: E402


def _elf_functions(image: bytes) -> list[tuple[int, int, str]]:
    """(address, size, name) of the functions in one registered object (ELF64, sections already
    given their load addresses by LLVM's RuntimeDyld)."""
    section_offset, = struct.unpack_from("Q", image, 0x28)
    entry_size, count = struct.unpack_from("HH", image, 0x3A)
    sections = [struct.unpack_from("IIQQQQIIQQ", image, section_offset + i * entry_size) for i in range(count)]
    out = []
    for sec in sections:
        if sec[1] != 2:  # SHT_SYMTAB
            continue
        strings = sections[sec[6]][4]
        for offset in range(sec[4], sec[4] + sec[5], 24):
            name, info, _, index, value, size = struct.unpack_from("IBBHQQ", image, offset)
            if info & 0xF != 2 or index == 0 or index >= 0xFF00:  # functions in a real section
                continue
            text = image[strings + name:image.index(b"\0", strings + name)].decode()
            out.append((sections[index][3] + value, size or 16, text))
    return out


def write_perf_map() -> int:
    """Names XLA:CPU's JIT-compiled kernels for perf; returns how many."""
    maps = Path("/proc/self/maps").read_text().splitlines()
    library = next(line.split()[-1] for line in maps if line.endswith("libjax_common.so"))
    base = min(int(line.split("-")[0], 16) for line in maps if line.endswith(library) and line.split()[2] == "00000000")
    symbols = subprocess.run(["nm", library], capture_output=True, text=True, check=True).stdout
    found = [line.split()[0] for line in symbols.splitlines() if line.endswith(" __jit_debug_descriptor")]
    if not found:
        raise SystemExit(f"{library} has no __jit_debug_descriptor symbol: cannot name XLA's kernels")
    _, _, _, entry = struct.unpack("IIQQ", ctypes.string_at(base + int(found[0], 16), 24))
    functions = []
    while entry:
        entry_next, _, address, size = struct.unpack("QQQQ", ctypes.string_at(entry, 32))
        functions += _elf_functions(ctypes.string_at(address, size))
        entry = entry_next
    with open(f"/tmp/perf-{os.getpid()}.map", "w") as f:
        f.writelines(f"{start:x} {size:x} {name}\n" for start, size, name in functions)
    return len(functions)


CLASSES = [  # (class, pattern on "dso symbol"), first match wins
    ("matmul: YNNPACK kernels", r"ynn::dot_"),
    ("matmul: Eigen operand packing", r"gemm_pack|TensorContraction"),
    ("matmul: unnamed JIT code (oneDNN's kernels under Eigen)", r"^\[JIT\].*\[\.\] 0x"),
    ("XLA loops: optimizer (multiply_add)", r"^\[JIT\].*multiply_add_fusion"),
    ("XLA loops: copies, transposes, slices, concatenation", r"^\[JIT\].*(copy|transpose|slice|concatenate)"),
    ("XLA loops: other (norms, GELU, softmax, dropout, ...)", r"^\[JIT\]"),
    ("YNNPACK: transposes, reductions, elementwise", r"ynn::"),
    ("malloc, memmove, memset", r"libc\.so.*(malloc|free|mem(move|cpy|set))"),
    ("idle (--system)", r"^swapper"),
    ("kernel", r"\[kernel"),
]


def classify(line: str) -> str:
    return next((name for name, pattern in CLASSES if re.search(pattern, line)), "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ner")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--frequency", type=int, default=499, help="samples a second per CPU")
    parser.add_argument("--system", action="store_true", help="sample every CPU (shows idle time)")
    parser.add_argument("--top", type=int, default=12, help="also list this many symbols")
    args, rest = parser.parse_known_args()
    missing = [tool for tool in ("perf", "nm") if shutil.which(tool) is None]
    if missing:
        parser.error(f"needs {' and '.join(missing)} on the PATH (perf: the linux-tools package; nm: binutils)")
    config = apply_overrides(load_config(args.config), config_overrides(rest, parser))
    bench = GptjaxSteps(config)
    batches = bench.batches()
    jax.block_until_ready(bench.train(next(batches)))  # compiles
    warm_up(bench.train, batches, jax.block_until_ready, steps=2)
    print(f"named {write_perf_map()} JIT-compiled kernels")
    with tempfile.TemporaryDirectory(prefix="gptjax-perf-") as scratch:
        data = str(Path(scratch) / "perf.data")
        target = ["-a"] if args.system else ["-p", str(os.getpid())]
        recorder = subprocess.Popen(["perf", "record", "-F", str(args.frequency), *target, "-o", data],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times = []
        try:
            time.sleep(1)
            for _ in range(args.steps):
                start = time.perf_counter()
                jax.block_until_ready(bench.train(next(batches)))
                times.append(time.perf_counter() - start)
        finally:  # a system-wide recorder must not outlive this process
            recorder.send_signal(signal.SIGINT)
            _, errors = recorder.communicate()
        if recorder.returncode not in (0, -signal.SIGINT):
            sys.exit(f"perf record failed ({recorder.returncode}): {errors.strip()[-500:]}")
        print("steps (s):", " ".join(f"{t:.2f}" for t in times), f"load average {os.getloadavg()[0]:.2f}")
        report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "comm,dso,sym", "-q",
                                 "-g", "none"], capture_output=True, text=True, check=True).stdout
    shares, symbols = collections.Counter(), []
    for line in filter(str.strip, report.splitlines()):
        percent, rest = line.split(None, 1)
        comm, rest = rest.split(None, 1)
        share = float(percent.rstrip("%"))
        entry = rest if comm != "swapper" else f"swapper {rest}"
        shares[classify(entry)] += share
        symbols.append((share, rest[:110]))
    for name, share in shares.most_common():
        print(f"{share:6.1f}%  {name}")
    for share, text in symbols[:args.top]:
        print(f"{share:6.2f}%  {text}")


if __name__ == "__main__":
    main()
