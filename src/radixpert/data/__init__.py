"""Datasets: native-layout readers, `Study` records, reports, images and phantoms."""
