"""``edgectl demo``: a whole fleet on one machine, and the small real models it ships."""
