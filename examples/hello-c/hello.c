#include <stdio.h>
#include <sys/utsname.h>

int main(void) {
    struct utsname host;
    uname(&host);
    printf("hello from a C program built by lazybuild (%s)\n", host.machine);
    return 0;
}
