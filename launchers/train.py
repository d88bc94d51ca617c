"""Launch UniF²ace training (recipe + key=value overrides) on a DeepSpeed engine.

    deepspeed launchers/train.py --deepspeed ds_configs/zero3.json --config synthface train.steps=300
    deepspeed --num_gpus 8 launchers/train.py --config unif2ace-1.8b train.init_from=runs/init/showo
    torchrun --nproc_per_node 2 launchers/train.py --config tiny
    python launchers/train.py --config tiny                       # single process
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launchers/train.py --config tiny   # CPU, gloo
    python launchers/train.py --list-keys                         # every config key, documented

Multi-node on SLURM: launchers/slurm/train.sbatch. DeepSpeed configs: ds_configs/README.md.
The loop itself lives in unif2ace/train/trainer.py (also installed as ``unif2ace-train``).
"""
from unif2ace.train.trainer import cli

if __name__ == "__main__":
    cli()
