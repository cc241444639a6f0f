"""On the robot: stream an artifact over video, bags or a synthroom sequence at a camera's rate, record what a
robot consumes as ROS 2 messages (MCAP) and semantic point clouds (PLY), and measure temporal stability.

Importing this package imports no backend: mcap, plyfile and OpenCV (the ``robot`` extra) load when used.
"""
