"""Native (C++ and CUDA) pieces of the runtime, compiled on first use (the system C++ compiler; nvcc for ``.cu``) and
loaded with ctypes.

They need no Python headers or torch headers, so a build takes about a second (a CUDA one ~10 s); the shared library
is cached next to its source (or in ~/.cache/wenet-trt where the source dir is read-only).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (containers often see
    every host core in the mask but may only use a quota of them; threads beyond it are throttled)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()
        limit = cpus if quota == "max" else -(-int(quota) // int(period))
    except (OSError, ValueError):  # no cgroup v2 quota to read: the mask is the limit
        limit = cpus
    return max(1, min(cpus, limit))


def pointer(array) -> ctypes.c_void_p:
    """The data address of a contiguous numpy array or torch tensor, for a native call."""
    return ctypes.c_void_p(array.data_ptr() if hasattr(array, "data_ptr") else array.ctypes.data)


class NativeBuildError(RuntimeError):
    """A native piece could not be built here (no compiler, a compile error, no writable folder)."""


@functools.cache
def load(name: str) -> ctypes.CDLL:
    """The compiled ``name.cc`` of this folder (built once per source version)."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise NativeBuildError("no C++ compiler found (install g++ or set CXX)")
    return _build(f"{name}.cc", "", [compiler, "-O3", "-std=c++17", "-pthread", "-shared", "-fPIC"])


@functools.cache
def load_cuda(name: str, capability: tuple[int, int]) -> ctypes.CDLL:
    """The compiled ``name.cu`` of this folder for GPUs of compute ``capability`` (built once per source version and
    capability, by nvcc: from PATH, $CUDA_HOME or /usr/local/cuda)."""
    compiler = nvcc()
    if compiler is None:
        raise NativeBuildError("no CUDA compiler found (nvcc on PATH or in $CUDA_HOME/bin)")
    arch = f"{capability[0]}{capability[1]}"
    return _build(f"{name}.cu", f"-sm{arch}", [compiler, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC",
                                              f"-gencode=arch=compute_{arch},code=sm_{arch}"])


def nvcc() -> str | None:
    """The CUDA compiler: on PATH, else in $CUDA_HOME/bin (default /usr/local/cuda); None where there is none."""
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return shutil.which("nvcc") or shutil.which("nvcc", path=os.path.join(home, "bin"))


def _build(source_name: str, tag: str, command: list[str]) -> ctypes.CDLL:
    """``source_name`` of this folder compiled by ``command`` (+ source and output) into a shared library, cached
    next to it (or in ~/.cache/wenet-trt) under its content's digest and ``tag``."""
    source = os.path.join(HERE, source_name)
    name = os.path.splitext(source_name)[0]
    with open(source, "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()[:12]
    for folder in (os.path.join(HERE, "_build"), os.path.join(os.path.expanduser("~"), ".cache", "wenet-trt")):
        library = os.path.join(folder, f"{name}-{digest}{tag}.so")
        if os.path.exists(library):
            return ctypes.CDLL(library)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            continue
        tmp = f"{library}.{os.getpid()}.tmp"
        result = subprocess.run([*command, source, "-o", tmp], capture_output=True, text=True)
        if result.returncode != 0:
            raise NativeBuildError(f"compiling {source} failed:\n{result.stderr}")
        os.replace(tmp, library)
        return ctypes.CDLL(library)
    raise NativeBuildError(f"no writable folder to build {name}")
