#!/bin/sh
# valgrind-daemon.sh ZKMEMD [ARGS...] - run zkmemd under valgrind memcheck for the test
# harness ($ZKM_TEST_DAEMON_WRAPPER). Any memcheck error or definite leak makes the daemon
# exit 99, which the integration tests see as a failed clean stop.
exec valgrind --quiet --suppressions="$(dirname "$0")/valgrind.supp" --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite --track-fds=no "$@"
