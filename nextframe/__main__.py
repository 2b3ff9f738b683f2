from nextframe.commands import main

main()
