from lazybuild.cli.main import run

run()
