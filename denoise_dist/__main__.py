import sys

from denoise_dist.cli import main

sys.exit(main())
