from balsamdb.cli.main import main

main()
