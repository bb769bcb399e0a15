"""``streamrec cluster``: capture and inference actors on Ray, and the driver app that puts
their cameras on the same dashboard as ``serve``."""
