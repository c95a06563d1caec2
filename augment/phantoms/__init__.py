"""The embedded CT phantoms: head (ICH) and abdomen (liver tumours) slices rendered through a
simulated CT acquisition (`render` writes them; `head`, `liver`, `geometry`, `ct_sim`)."""
