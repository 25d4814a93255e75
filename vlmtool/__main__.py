from vlmtool.cli import main

main()
