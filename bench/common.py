"""Shared pieces of the training benchmarks: the UniProt corpus, the machine, the peak, timing.

Every benchmark prints human-readable lines and, as its last line, one JSON object.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from Bio.SeqIO.FastaIO import SimpleFastaParser  # noqa: E402

from foundry.data.dataset import InMemoryTokens  # noqa: E402
from modalities.protein.alphabet import EsmTokenizer  # noqa: E402

SHARED = Path("/work/shared/data/protein_sequences/mmseqs2_uniprot_DB.fasta.gz")
BUNDLED = ROOT / "modalities" / "protein" / "data" / "uniprot_sample.fasta.gz"


def default_data() -> Path:
    return SHARED if SHARED.exists() else BUNDLED


def load_corpus(path: Path, limit: int | None = None) -> tuple[InMemoryTokens, EsmTokenizer]:
    """FASTA(.gz) -> tokenized documents (<cls> seq <eos>) with the protein plugin's tokenizer."""
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rt") as handle:
        records = list(SimpleFastaParser(handle))
    if limit:
        records = records[:limit]
    tokenizer = EsmTokenizer()
    ids = tokenizer.encode_batch([seq for _, seq in records])
    return InMemoryTokens(ids, [name.split()[0] for name, _ in records], tokenizer.fingerprint()), tokenizer


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    info = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
    }
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)  # others on a shared machine show up here
    except OSError:
        pass
    return info


def matmul_peak(dtype=torch.float32, device="cpu", n: int = 2048, seconds: float = 3.0) -> float:
    """Measured FLOP/s of a large square matmul (best of repeated runs): the machine's practical peak."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    out = torch.empty(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    torch.matmul(a, b, out=out)
    sync()
    best, spent = float("inf"), 0.0
    while spent < seconds:
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        sync()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return 2.0 * n**3 / best


def reuse_freed_memory() -> bool:
    """Keep freed heap memory in the process (glibc ``mallopt``) instead of unmapping it.

    Training allocates and frees the same large activation buffers every step. By default glibc
    serves blocks over 128 KiB with mmap and returns them on free, so every step page-faults them
    in again — costly in VMs (this one: a Firecracker guest with free-page reporting). Applied to
    the whole process, so foundry and the peer benefit alike. Returns False where unavailable.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def print_json(result: dict) -> None:
    print(json.dumps(result, sort_keys=False))


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
