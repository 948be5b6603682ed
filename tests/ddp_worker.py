"""Run by tests/test_training.py under torchrun (2 CPU processes, gloo).

1. The real entry point: meta_train() for 3 steps in a DDP run (rank 0 writes the checkpoint).
2. A replica check: both ranks train on *different* batches through DDP and the sparse W averaging, then dump
   their weights; the test asserts the two dumps are identical.
"""
import os
import sys

import torch
import torch.distributed as dist

from config import load_config
from dataset.store import MetaDataset
from model import build_networks
from model.loss import GeneratorLoss
from training import distributed
from training.loop import make_loader, meta_train
from training.precision import Precision
from training.talking_head import Networks, build_optimizers, collate_episodes, train_step

store, run_dir = sys.argv[1], sys.argv[2]
# One process group for both parts: meta_train reuses it and leaves it to its owner.
info, device = distributed.init_distributed(torch.device("cpu"))
if sys.argv[3:] == ["headgan"]:  # 3. HeadGAN through meta_train only (tests/test_headgan.py)
    cfg = load_config("headgan_demo", ["data.num_workers=0", "train.batch_size=2", "train.steps=4",
                                       "train.checkpoint_every=4", "train.val_every=0", f"data.root={store}"])
    meta_train(cfg, run_dir, progress=False)
    distributed.shutdown_distributed(info)
    sys.exit(0)
cfg = load_config("demo", ["model.image_size=32", "train.batch_size=2", "train.k_shots=2", "data.num_workers=0",
                           "train.steps=3", "train.checkpoint_every=3", f"data.root={store}"])
meta_train(cfg, run_dir, progress=False)

torch.manual_seed(1234 + info.rank)  # different initial weights per rank: DDP must broadcast rank 0's
dataset = MetaDataset(store, "train", 2, 32)
cfg.model.discriminator.num_videos = dataset.num_videos
nets = build_networks(cfg.model)
opts = build_optimizers(nets["embedder"], nets["generator"], nets["discriminator"], cfg)
distributed.broadcast_parameters(nets["discriminator"].W)
wrapped = Networks(distributed.wrap(nets["embedder"], info, device), distributed.wrap(nets["generator"], info, device),
                   distributed.wrap(nets["discriminator"], info, device, ignore=("W.weight",)), nets["discriminator"])
batches = iter(make_loader(dataset, cfg, info, 0, device, collate_episodes))
for step in range(2):
    batch = next(batches)
    train_step(batch, wrapped, opts, GeneratorLoss(cfg.loss, {}), step, Precision("none", device),
               sync_w=lambda weight: distributed.average_sparse_grad(weight, 3 * cfg.train.batch_size))
state = {f"{n}.{k}": v for n, net in nets.items() for k, v in net.state_dict().items()}
torch.save(state, f"{os.environ['TH_TEST_DUMP']}{info.rank}.pt")
dist.barrier()
distributed.shutdown_distributed(info)
