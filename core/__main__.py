from tle.cli import main

main()
