"""Write the first N episodes of the human PushT zarr as a LeRobotDataset v3 with LeRobot's own writer.

How ``pusht_3ep_v3`` was made (LeRobot 0.6.1 in its own virtualenv, Python 3.12; not a test):
``python make_fixture.py pusht_cchi_v7_replay.zarr pusht_3ep_v3 3``. Copied from
``../shared/data/lerobot/make_fixture.py``, reformatted.
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import zarr
from lerobot.datasets.lerobot_dataset import LeRobotDataset

src, out, n_ep = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
z = zarr.open(src, mode="r")
ends = np.asarray(z["meta/episode_ends"])
state = np.asarray(z["data/state"])
action = np.asarray(z["data/action"])
img = z["data/img"]
features = {
    "observation.image": {"dtype": "video", "shape": (96, 96, 3), "names": ["height", "width", "channel"]},
    "observation.state": {"dtype": "float32", "shape": (2,), "names": {"motors": ["x", "y"]}},
    "action": {"dtype": "float32", "shape": (2,), "names": {"motors": ["x", "y"]}},
}
if out.exists():
    shutil.rmtree(out)
ds = LeRobotDataset.create(repo_id="local/pusht_fixture", fps=10, features=features, root=out, use_videos=True)
start = 0
for e in range(n_ep):
    end = int(ends[e])
    for t in range(start, end):
        ds.add_frame({"observation.image": np.asarray(img[t]).astype(np.uint8),
                      "observation.state": state[t, :2].astype(np.float32),
                      "action": action[t].astype(np.float32),
                      "task": "Push the T-shaped block onto the T-shaped target."})
    ds.save_episode()
    start = end
ds.finalize()
print("frames", start, "episodes", n_ep)
