"""A recorder process for kill -9 trials: episodes of synthetic ticks, each kept, until it is killed.

    python record_forever.py ROOT   (prints READY once the dataset is open)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ticks  # noqa: E402

from teleop.dataset import DatasetWriter  # noqa: E402
from teleop.recorder import Recorder  # noqa: E402
from teleop.rows import dataset_config  # noqa: E402

TICKS_PER_EPISODE = 12


def main(root: Path) -> None:
    with DatasetWriter(root, dataset_config(ticks.CAMERAS, 15, {"robot": "synthetic"})) as writer:
        recorder = Recorder(writer, list(ticks.CAMERAS), lambda record, progress: True)
        print("READY", flush=True)
        episode = 0
        while True:
            episode += 1
            recorder.begin(episode, "open the drawer")
            for i in range(TICKS_PER_EPISODE):
                recorder.record(ticks.tick(i))
                time.sleep(0.005)
            recorder.end(ticks.episode_record(episode))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
