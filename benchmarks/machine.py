"""One line describing the machine a benchmark ran on (printed at the top of every table)."""

from __future__ import annotations

import os
import platform

import torch


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    where = f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    if device.type == "cuda":
        where = f"GPU: {torch.cuda.get_device_name(device)} | " + where
    return f"machine: {where} | torch {torch.__version__} | python {platform.python_version()}"
