"""kagglecv: a Kaggle image-competition starter.

make data COMP=<slug>  ->  make train  ->  make submit
"""

import os

# albumentations asks the internet for its latest version on import; kagglecv never phones home
# (the offline demo makes no network call). Set before any module imports albumentations.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

# A 20000 x 20000 picture is no photo worth training on, and decoding it costs gigabytes. OpenCV
# reads its own cap once, when cv2 loads, so it is set here, before any module imports cv2.
MAX_PIXELS = 100_000_000
os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(MAX_PIXELS)
