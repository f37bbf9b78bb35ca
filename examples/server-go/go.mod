module example.com/server-go

go 1.19
