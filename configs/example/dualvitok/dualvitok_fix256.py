# DualViTok trained on 256x256 centre crops of ImageNet. Same architecture, loss and optimiser as
# dualvitok_anyres_max512.py (inherited below); this file only states what differs, so the loaded
# config has the same keys as the official `dualvitok_fix256.py`.

_base_ = ['./dualvitok_anyres_max512.py']

vq_model = dict(config=dict(pixel_drop_rate=0.1))

data_args = dict(
    per_proc_batch_size=8,
    image_size=256,
    train=dict(
        resolution=256,
        # `_delete_` drops the any-resolution min/max pixel keys inherited from the base file.
        augment=dict(_delete_=True, type='dualvitok_fix_resolution_train'),
        dataset=[
            dict(dataset='imagenet', data_path='./data/imagenet_train/',
                 shard_data=True, global_sharding=True),
        ],
    ),
)

results_dir = './logdir/dualvitok/dualvitok_fix256/'
sample_dir = f'{results_dir}sample_dir/'

global_seed = 1
ckpt_every = 5000
training_with_anyres = False
use_group_image_resolution = False
