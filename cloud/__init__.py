"""The cloud hub on Ray Serve. ``cloud.app`` holds every ``ray.*`` call; the rest runs without Ray."""
