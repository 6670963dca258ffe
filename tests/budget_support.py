"""A fake clock for ``train.max_minutes`` tests: epochs take a known time.

``tfseg.train.train(..., clock=clock, callbacks=[EpochTakes(clock, seconds)])``: the clock only
moves when an epoch ends, by ``seconds(epoch)`` (a number or a function of the epoch index), so
the time budget sees exactly those epoch times whatever the machine's load. ``batch_sleep`` makes
the real epochs long enough to be killed in the middle (the resume test).

Run as ``python -m tests.budget_support RUN_DIR SECONDS BATCH_SLEEP KEY=VALUE ...`` it trains
with those overrides (the SIGKILL resume test starts it twice).
"""
from __future__ import annotations

import sys
import time

import keras


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class EpochTakes(keras.callbacks.Callback):
    def __init__(self, clock: FakeClock, seconds, batch_sleep: float = 0.0):
        super().__init__()
        self.clock, self.seconds, self.batch_sleep = clock, seconds, batch_sleep

    def on_train_batch_end(self, batch, logs=None):
        if self.batch_sleep:
            time.sleep(self.batch_sleep)

    def on_epoch_end(self, epoch, logs=None):
        self.clock.now += self.seconds(epoch) if callable(self.seconds) else float(self.seconds)


def main(argv) -> int:
    from tfseg import config as config_lib
    from tfseg.train import train

    run_dir, seconds, batch_sleep, overrides = argv[0], float(argv[1]), float(argv[2]), argv[3:]
    clock = FakeClock()
    result = train(config_lib.load(None, overrides), run_dir, verbose=2, clock=clock,
                   callbacks=[EpochTakes(clock, seconds, batch_sleep)])
    print(f"done: {result['epochs']} epochs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
