"""The physics of one tile: device models (programming noise, drift, read noise), conductance
converters, drift compensation and its readout periphery, the two physics of a programmed tile,
the converter path that simulates a tile over time, the weight error, and test-weight sampling.

Nothing here knows of a search or a network; everything broadcasts over leading batch
dimensions (layers, candidates, times, repeats).
"""
