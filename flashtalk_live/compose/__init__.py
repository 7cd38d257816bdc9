"""On-air layers drawn over every aired frame (label, logo, product cards, captions): compositor and text."""
