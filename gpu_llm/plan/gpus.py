"""Parse GPU descriptions: nvidia-smi CSV query output and the CLI's compact `4x22528MiB@7.5` form."""

from __future__ import annotations

import re

from gpu_llm.plan.types import GPU

# The fields `gpu-llm plan --from-nvidia-smi` expects, in this order (README documents the command).
PLAN_QUERY_FIELDS = ("index", "name", "memory.total", "compute_cap", "driver_version")


def parse_query_csv(text: str, fields: tuple[str, ...] = PLAN_QUERY_FIELDS, *, strict: bool = True) -> list[GPU]:
    """GPUs from `nvidia-smi --query-gpu=<fields> --format=csv,noheader[,nounits]` output.

    strict: a malformed line is an error (the CLI); otherwise it is skipped and extra trailing fields are
    ignored (facts read whatever a host prints).
    """
    gpus = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        try:
            if len(cells) < len(fields) or (strict and len(cells) > len(fields)):
                raise ValueError(f"expected {len(fields)} comma-separated fields ({', '.join(fields)}), "
                                 f"got {len(cells)}")
            gpus.append(_gpu_from_row(dict(zip(fields, cells))))
        except ValueError as exc:
            if strict:
                raise ValueError(f"line {lineno}: {exc}: {line.strip()!r}") from None
    return gpus


def _gpu_from_row(row: dict[str, str]) -> GPU:
    memory = re.fullmatch(r"(\d+)(\s*MiB)?", row["memory.total"])
    if not memory:
        raise ValueError(f"memory.total {row['memory.total']!r} is not a MiB figure")
    cc = re.fullmatch(r"(\d+)\.(\d+)", row.get("compute_cap", ""))
    if not cc:
        raise ValueError(f"compute_cap {row.get('compute_cap')!r} is not like 9.0")
    if not row.get("index", "0").isdigit():
        raise ValueError(f"index {row.get('index')!r} is not a number")
    return GPU(index=int(row.get("index", 0)), name=row["name"], memory_mib=int(memory.group(1)),
               compute_capability=(int(cc.group(1)), int(cc.group(2))),
               driver_version=row.get("driver_version") or None, pci_bus_id=row.get("pci.bus_id"),
               uuid=row.get("uuid"))


_COMPACT = re.compile(r"(?:(\d+)x)?(\d+(?:\.\d+)?)(MiB|GiB|GB)@(\d+)\.(\d+)(?::(nvlink|pcie))?(?::(geforce|titan))?")


def parse_compact(spec: str, driver_version: str | None = None) -> list[GPU]:
    """`4x22528MiB@7.5[:pcie][:geforce]` -> four GPUs of 22528 MiB, compute capability 7.5 (GB is read as GiB);
    :geforce or :titan marks consumer cards (their brand decides which images an older driver starts)."""
    m = _COMPACT.fullmatch(spec.strip())
    if not m:
        raise ValueError(f"--gpus {spec!r}: expected COUNTxMEMORY@CC[:nvlink|pcie][:geforce|titan], e.g. "
                         "4x22528MiB@7.5:pcie:geforce or 1x80GiB@9.0")
    count = int(m.group(1) or 1)
    size = float(m.group(2))
    mib = int(size if m.group(3) == "MiB" else size * 1024)
    cc = (int(m.group(4)), int(m.group(5)))
    brand = {"geforce": "GeForce ", "titan": "TITAN "}.get(m.group(7) or "", "")
    return [GPU(index=i, name=f"NVIDIA {brand}GPU {mib} MiB CC {cc[0]}.{cc[1]}", memory_mib=mib, compute_capability=cc,
                driver_version=driver_version, interconnect=m.group(6)) for i in range(count)]
