"""kagglecv: a Kaggle image-competition starter.

make data COMP=<slug>  ->  make train  ->  make submit
"""

import os

# albumentations asks the internet for its latest version on import; kagglecv never phones home
# (the offline demo makes no network call). Set before any module imports albumentations.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
