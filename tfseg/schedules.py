"""The resizable learning-rate schedule that ``train.max_minutes`` lays out again during training.

:class:`ResizableSchedule` is the base of the schedules of :func:`tfseg.train.make_schedule`
(``OneCycle``, ``WarmupCosine``) and what the resume state (:class:`tfseg.callbacks.TrainingState`)
and the time budget (:class:`tfseg.callbacks.TimeBudget`) resize, save and restore. The two
concrete schedules stay in :mod:`tfseg.train`, next to :func:`~tfseg.train.make_schedule`;
this base lives here so that :mod:`tfseg.callbacks` need not import :mod:`tfseg.train`.
"""
from __future__ import annotations

import keras


class ResizableSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule whose length can be changed during training (``train.max_minutes`` lays it out
    for the epochs the time budget allows): total and warm-up steps live in non-trainable
    variables, which the compiled train step reads at every step.

    ``resize(total_steps, step)`` moves the end; the warm-up is kept once it is over and, while it
    runs, never ends before ``step`` (the learning rate is never cut off in the middle of it).
    """

    def __init__(self, total_steps, warmup_steps):
        self._total = keras.Variable(float(max(1, total_steps)), dtype="float32", trainable=False,
                                     name="schedule_total_steps")
        self._warmup = keras.Variable(float(warmup_steps), dtype="float32", trainable=False,
                                      name="schedule_warmup_steps")

    @property
    def total_steps(self) -> float:
        return float(keras.ops.convert_to_numpy(self._total))

    @property
    def warmup_steps(self) -> float:
        return float(keras.ops.convert_to_numpy(self._warmup))

    def wanted_warmup(self, total_steps: float) -> float:
        raise NotImplementedError

    def resize(self, total_steps: float, step: int) -> None:
        total = float(max(1, total_steps, step))
        warmup = self.warmup_steps
        if step < warmup:  # still warming up: the new length, but not ending before now
            warmup = max(self.wanted_warmup(total), float(step))
        self._total.assign(total)
        self._warmup.assign(warmup)

    def state(self) -> dict:
        return {"total_steps": self.total_steps, "warmup_steps": self.warmup_steps}

    def restore(self, state: dict) -> None:
        self._total.assign(float(state["total_steps"]))
        self._warmup.assign(float(state["warmup_steps"]))
