"""kagglecv: a Kaggle image-competition starter.

make data COMP=<slug>  ->  make train  ->  make submit
"""

__version__ = "0.1.0"
