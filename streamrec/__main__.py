from streamrec.cli.main import entry

entry()
