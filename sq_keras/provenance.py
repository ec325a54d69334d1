"""Where a result came from: versions, git commit and machine.

Every file of results (training's `config.json` and SavedModel metadata,
the reproduction tables, the benchmarks' JSON) records `environment()`, so a
number can be traced to the code and the CPU that produced it.

```python
from sq_keras import provenance

provenance.environment()
# {"sq_keras": "0.1.0", "tensorflow": "2.21.0", "keras": "3.15.1",
#  "python": "3.11.7", "git_commit": "fdb0cbc...",
#  "machine": "x86_64, 2 cpus, Intel(R) Xeon(R) Processor, "
#             "native bfloat16 (avx512_bf16, amx_bf16)"}
```
"""

import os
import platform
import subprocess

import keras
import tensorflow as tf

import sq_keras
from sq_keras import precision


def git_commit():
    """The commit of the checkout sq_keras runs from, or None.

    None outside git, and for an installed copy: a site-packages that lies
    inside some repository (a virtual environment in a checkout) holds code
    that is not that repository's commit.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) != 2:
        return None
    toplevel, commit = lines
    if os.path.realpath(toplevel) != os.path.realpath(root):
        return None
    return commit


def bfloat16_support():
    """Whether the CPU runs bfloat16 natively, in words: costs measured in
    bfloat16 differ ~4x between such a CPU and one that emulates it. A cap
    on oneDNN's instructions (`ONEDNN_MAX_CPU_ISA` or `DNNL_MAX_CPU_ISA`) is
    named too: it changes float32 costs as well."""
    flags = precision.native_bfloat16_flags()
    support = f"native bfloat16 ({', '.join(flags)})" if flags else "no native bfloat16"
    setting = precision.onednn_isa_cap_setting()
    if setting is None:
        return support
    variable, cap = setting
    return f"{support}, oneDNN capped at {cap} ({variable})"


def machine_description():
    """`"<arch>, <n> cpus, <CPU model>, <bfloat16 support>"` of this machine,
    recorded beside results."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cpus, {cpu}, {bfloat16_support()}"


def environment():
    """Versions, git commit and machine, recorded beside results."""
    return {
        "sq_keras": sq_keras.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "machine": machine_description(),
    }
