# launch/ tests in cskv_tests: the environment checks link the launch folder's library.
target_link_libraries(cskv_tests PRIVATE cskv_launch)
