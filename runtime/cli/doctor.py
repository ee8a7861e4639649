"""``dx doctor``: which tier this machine should run, and how a model would fit.

Pure functions over :mod:`dx.host.hardware`'s findings and a model's GGUF facts, so
each rule is tested without the hardware it talks about.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dx.host.hardware import Hardware
from dx.host.tiers import TierChoice
from dx.models.check import ModelFacts

if TYPE_CHECKING:
    from dx.host.cuda_libs import CudaSearch

GIB = 1024**3
MIB = 1024**2
ENGINE_OVERHEAD = 512 * MIB      # compute buffers, CUDA context, the engine itself
VRAM_USABLE = 0.90               # leave room for the display and other processes
RAM_USABLE = 0.85
MAX_SUGGESTED_CTX = 32768
MIN_CTX = 2048
PARTIAL_OFFLOAD_CTX = 8192


@dataclass(frozen=True)
class ModelPlan:
    model: str
    model_bytes: int
    kv_bytes_per_token: int
    fits_vram: bool
    fits_ram: bool
    gpu_layers: int              # layers offloaded (block_count + 1 = everything, the output layer too)
    total_layers: int
    context: int                 # suggested context size
    threads: int
    notes: list[str] = field(default_factory=list)


def kv_bytes_per_token(facts: ModelFacts, bytes_per_value: int = 2) -> int:
    """f16 K and V for every layer: 2 × layers × kv_heads × head_dim × 2 bytes."""
    if not (facts.block_count and facts.embedding_length and facts.head_count):
        return 0
    head_dim = facts.embedding_length // facts.head_count
    return 2 * facts.block_count * (facts.head_count_kv or facts.head_count) * head_dim * bytes_per_value


def plan_model(hw: Hardware, tier: TierChoice, name: str, model_bytes: int, facts: ModelFacts) -> ModelPlan:
    """Whether ``model`` fits in VRAM or RAM here, and the context, GPU layers and threads to use."""
    notes: list[str] = []
    kv = kv_bytes_per_token(facts)
    layers = facts.block_count
    train_ctx = facts.context_length or 4096
    threads = max(1, min(hw.cpu.physical_cores, hw.cpu.usable_cores))
    gpus = [g for g in hw.gpus if g.usable and g.memory_total] if tier.tier != "cpu" else []
    vram = sum(int(g.memory_total * VRAM_USABLE) for g in gpus if g.memory_total)
    ram = int(hw.memory.available * RAM_USABLE)

    def ctx_for(budget: int) -> int:
        room = budget - model_bytes - ENGINE_OVERHEAD
        if room <= 0 or kv <= 0:
            return 0 if room <= 0 else min(train_ctx, MAX_SUGGESTED_CTX)
        ctx = min(room // kv, train_ctx, MAX_SUGGESTED_CTX)
        return 1 << (ctx.bit_length() - 1) if ctx >= MIN_CTX else 0  # a power of two is what people expect

    fits_vram = bool(vram) and ctx_for(vram) >= MIN_CTX
    fits_ram = ctx_for(ram) >= MIN_CTX
    if fits_vram:
        context, gpu_layers = ctx_for(vram), layers + 1
        notes.append(f"fits entirely in VRAM ({_gib(vram)} usable)")
    elif vram and layers:
        # Split between GPU and CPU: a modest context, and as many layers (weights + their KV) as VRAM holds.
        context = min(ctx_for(vram + ram) or MIN_CTX, PARTIAL_OFFLOAD_CTX)
        per_layer = (model_bytes + kv * context) / layers
        room = vram - ENGINE_OVERHEAD
        gpu_layers = max(0, min(layers, int(room // per_layer))) if room > 0 else 0
        notes.append(f"does not fit in VRAM ({_gib(vram)} usable): {gpu_layers} of {layers} layers on the GPU, "
                     "the rest on the CPU")
    else:
        context, gpu_layers = ctx_for(ram), 0
    if not fits_ram and not fits_vram:
        notes.append(f"needs about {_gib(model_bytes + ENGINE_OVERHEAD + kv * MIN_CTX)} but only "
                     f"{_gib(ram + vram)} is free: it will swap or fail — pick a smaller quantisation")
        context = context or MIN_CTX
    if context and context < train_ctx:
        notes.append(f"context {context} of the {train_ctx} the model was trained for, to stay in memory")
    return ModelPlan(name, model_bytes, kv, fits_vram, fits_ram, gpu_layers, layers + 1 if layers else 0,
                     context, threads, notes)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def cuda_runtime(engine: Path | None = None) -> CudaSearch | None:
    """For a thin CUDA engine (the one dx would start), the whole cuBLAS/cudart search; None otherwise."""
    from dx.host.cuda_libs import search_for_engine
    from dxverify.errors import DXError

    if engine is None:
        from dx.engine.locate import locate_engine

        try:
            engine = locate_engine()
        except DXError:
            return None
    return search_for_engine(engine)


def report_json(hw: Hardware, tier: TierChoice, plan: ModelPlan | None,
                cuda: CudaSearch | None = None) -> dict[str, Any]:
    doc = {"hardware": hw.to_json(), "tier": asdict(tier), "model": asdict(plan) if plan else None}
    if cuda is not None:
        doc["cuda_libs"] = {"chosen": str(cuda.chosen) if cuda.chosen else None, "driver": cuda.driver,
                            "candidates": [{"source": c.source, "path": str(c.path), "accepted": c.accepted,
                                            "reason": c.reason} for c in cuda.candidates],
                            "notice": cuda.notice()}
    return doc


def report_text(hw: Hardware, tier: TierChoice, plan: ModelPlan | None, cuda_libs: CudaSearch | None = None) -> str:
    cpu = hw.cpu
    lines = [
        f"os/arch   {hw.os}/{hw.arch}",
        f"cpu       {cpu.model}",
        f"cores     {cpu.physical_cores} physical, {cpu.logical_cores} logical, {cpu.usable_cores} usable",
        f"isa       {' '.join(cpu.features) or '-'}",
        f"memory    {_gib(hw.memory.total)} total, {_gib(hw.memory.available)} available"
        + (f" (cgroup limit {_gib(hw.memory.limit)})" if hw.memory.limit else ""),
    ]
    if not hw.gpus:
        lines.append("gpu       none found")
    for g in hw.gpus:
        mem = _gib(g.memory_total) if g.memory_total else "? GiB"
        drv = f", driver {g.driver}" if g.driver else ""
        cuda = f", CUDA {g.cuda_version}" if g.cuda_version else ""
        bad = " (no working driver)" if not g.usable else ""
        lines.append(f"gpu       {g.vendor}: {g.name}, {mem}{drv}{cuda} [{g.source}]{bad}")
    if hw.vulkan_devices:
        lines.append(f"vulkan    {', '.join(hw.vulkan_devices)}")
    lines.append(f"tier      {tier.tier} — {tier.reason}")
    lines += [f"advice    {a}" for a in tier.advice]
    if cuda_libs is not None:  # a thin CUDA engine: where its cuBLAS/cudart come from, every place looked at
        lines += [f"cuda-libs {line.removeprefix('dx: cuda: ')}" for line in cuda_libs.log_lines()]
        notice = cuda_libs.notice()
        if notice:
            lines.append(f"advice    {notice.removeprefix('dx: ')}")
    if plan:
        where = "VRAM" if plan.fits_vram else "RAM" if plan.fits_ram else "neither VRAM nor RAM"
        lines += [
            f"model     {plan.model}: {_gib(plan.model_bytes)}, fits in {where}",
            f"suggest   --ctx-size {plan.context} --n-gpu-layers {plan.gpu_layers} --threads {plan.threads}",
        ]
        lines += [f"note      {n}" for n in plan.notes]
    return "\n".join(lines)
