# cmake -DSOURCE=... -DBINARY=... -DCXX=clang++ -DTW_ROOT=... -P build_targets.cmake
# Configures and builds the fuzz targets with clang; fails loudly so ctest shows why.
file(MAKE_DIRECTORY ${BINARY}/artifacts)
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE} -B ${BINARY} -DCMAKE_CXX_COMPILER=${CXX}
                        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTW_ROOT=${TW_ROOT}
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring the fuzz targets failed")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY} -j2 RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "building the fuzz targets failed")
endif()
