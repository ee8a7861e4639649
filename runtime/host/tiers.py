"""Which engine tier this machine should run: THE one tier picker.

A pure function of what :mod:`dx.host.hardware` probed (``pick_tier(Hardware)``),
so ``dx doctor`` and ``dxbuild --gpu auto`` give the same answer and each rule is
tested without the hardware it talks about.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dx.host.hardware import Hardware

# Minimum NVIDIA driver per CUDA tier (the same numbers the release manifest carries).
MIN_DRIVER = {"cuda13": 580, "cuda12": 525}


@dataclass(frozen=True)
class TierChoice:
    tier: str                    # cpu | cuda12 | cuda13 | rocm | vulkan | metal
    reason: str
    advice: list[str] = field(default_factory=list)


def driver_major(version: str | None) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except (TypeError, ValueError):
        return None


def pick_tier(hw: Hardware) -> TierChoice:
    """The best engine tier for this machine, with the reason in words."""
    advice: list[str] = []
    nvidia = [g for g in hw.gpus if g.vendor == "nvidia" and g.usable]
    if nvidia:
        g = nvidia[0]
        major = driver_major(g.driver)
        if major is not None and major >= MIN_DRIVER["cuda13"]:
            return TierChoice("cuda13", f"NVIDIA {g.name} with driver {g.driver} (cuda13 needs ≥ 580)")
        if major is not None and major >= MIN_DRIVER["cuda12"]:
            return TierChoice(
                "cuda12", f"NVIDIA {g.name} with driver {g.driver} (cuda12 needs ≥ 525; cuda13 needs ≥ 580)",
                ["a driver ≥ 580 would allow the cuda13 tier"],
            )
        advice.append(f"NVIDIA {g.name} has driver {g.driver or 'unknown'}: cuda12 needs ≥ 525, "
                      "cuda13 ≥ 580 — update the NVIDIA driver")
    for g in hw.gpus:
        if not g.usable:
            advice.append(f"{g.name} is present but its driver does not answer"
                          + (" — install the NVIDIA driver (nvidia-smi)" if g.vendor == "nvidia" else
                             " — install ROCm (rocm-smi) or a Vulkan driver" if g.vendor == "amd" else ""))
    if any(g.vendor == "apple" for g in hw.gpus):
        return TierChoice("metal", "Apple Silicon: Metal on unified memory", advice)
    amd = [g for g in hw.gpus if g.vendor == "amd" and g.usable]
    if amd and hw.rocm:
        return TierChoice("rocm", f"AMD {amd[0].name} with ROCm", advice)
    if hw.vulkan_devices:
        gpu_like = [d for d in hw.vulkan_devices if "llvmpipe" not in d.lower()]
        if gpu_like:
            if amd:
                advice.append("ROCm is not installed; the vulkan tier works without it")
            return TierChoice("vulkan", f"Vulkan device {gpu_like[0]}", advice)
    isa = ", ".join(hw.cpu.features[-3:]) if hw.cpu.features else "baseline ISA"
    return TierChoice("cpu", f"no usable GPU; CPU {hw.cpu.model} ({isa}) — the cpu tier picks the best "
                      "kernels for it at run time", advice)
