"""How the defaults were chosen: the study around the core (selection grids, cross-validated
levers, results tables, the ablation report). It imports the core; the core never imports it."""
