"""The ``streamrec`` command line: one parser module per command group; ``print`` lives here
and nowhere else."""
