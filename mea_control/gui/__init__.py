"""The Qt application: live traces, raster, array map, PSTH, model panel and run control."""
