"""Train COAT on photos of one object category (see ``coat_hf.training``; ``--help`` lists every field).

    python training/train.py --config training/configs/small.yaml --data_dir ../shared/data/celeba/train
    accelerate launch --mixed_precision bf16 training/train.py --config training/configs/coat-celeba-128-gpu.yaml ...
"""

from coat_hf.training import main

if __name__ == "__main__":
    main()
