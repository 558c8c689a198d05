"""The checkout the tests run from: its competitions/ and configs/ are copied into each test's
working folder, and a subprocess finds kagglecv in its src/."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
