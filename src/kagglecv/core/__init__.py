"""core: what every stage shares. Errors, the console, safe file writes, locks, CSV reading, the
recipe (config) and the competition spec, metrics, run folders and their files, RNG state, image
decoding and the drawing kit. Imports no other stage."""
