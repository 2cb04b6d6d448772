from suanwang.cli import main

main()
