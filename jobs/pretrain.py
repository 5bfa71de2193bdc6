"""JEPA pretraining of AnySat from Zarr shards: `python jobs/pretrain.py --config configs/pretrain-demo.yaml`.

The same as `anysat-stac pretrain` (see `modelops.cli.pretrain` or `--help`); also runs as
`ray job submit --working-dir . -- python jobs/pretrain.py --config …` on any Ray cluster.
"""

import sys

from modelops.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
