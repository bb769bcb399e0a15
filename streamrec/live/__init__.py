"""The live path up to a labelled message: sources, capture threads, frame rings, cameras,
label smoothing, the JSON messages and the activity history store."""
