"""Trainers that turn a seed model and a task's training data into a LoRA checkpoint, one method per file (a config
dataclass of commented defaults, then its train function); what they share is in common.py and data.py. METHODS is
what `bench train` and the study's profiles offer."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from fine_tune.common import TrainJob
from fine_tune.gkd import GKDConfig, train_gkd
from fine_tune.onpolicy_sd import OnPolicySDConfig, train_onpolicy_sd
from fine_tune.sdft import train_sdft
from fine_tune.sft import SFTConfig, train_sft


class Trainer(NamedTuple):
    config: type  # the method's config dataclass; files and profiles name its keys flat
    train: Callable[[TrainJob, Any], dict[str, Any]]  # returns the train.json record
    teacher: bool = False  # distils a separate teacher model (--teacher)


METHODS = {"sft": Trainer(SFTConfig, train_sft), "sdft": Trainer(SFTConfig, train_sdft),
           "gkd": Trainer(GKDConfig, train_gkd, teacher=True), "onpolicy_sd": Trainer(OnPolicySDConfig, train_onpolicy_sd)}
