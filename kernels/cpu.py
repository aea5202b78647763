"""What the CPU the kernels compile for can do (kernels compile for the host unless
``NUMBA_CPU_NAME`` names another CPU; a portable build must not use host-only instructions)."""

import llvmlite.binding as llb
import numba


def host_has(feature: str) -> bool:
    """Whether kernels may use an instruction set extension (LLVM's name: ``"avx2"``,
    ``"avx512vnni"``)."""
    if numba.config.CPU_NAME not in (None, "host"):
        return False
    try:
        return bool(llb.get_host_cpu_features().get(feature))
    except Exception:  # not an x86 host
        return False
